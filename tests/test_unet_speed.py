"""benchmarks.unet_speed on the tiny UNet: rows, the eager reference, verdicts and the page."""

from __future__ import annotations

import pytest
import torch

from benchmarks import unet_speed


def test_measure_times_eager_first_and_compares_outputs(tiny_unet_dir) -> None:
    res = unet_speed.measure(str(tiny_unet_dir), torch.device("cpu"), [2, 3], ["channels_last", "autocast_fp16"],
                             repeats=1, clock="cpu")  # fmt: skip
    rows = res["rows"]
    # eager is added and timed first; fp16 autocast is CUDA-only and skipped on the CPU
    assert [(r["variant"], r["batch"]) for r in rows] == [("eager", 2), ("channels_last", 2), ("eager", 3),
                                                          ("channels_last", 3)]  # fmt: skip
    assert all(r["seconds"] > 0 for r in rows) and rows[0]["speedup"] == 1.0 and rows[0]["rel_diff"] == 0.0
    assert rows[1]["rel_diff"] < 1e-4  # the same weights in another memory format
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['int8'\]; valid: eager"):
        unet_speed.measure(str(tiny_unet_dir), torch.device("cpu"), [2], ["int8"], repeats=1, clock="cpu")
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        unet_speed.measure(str(tiny_unet_dir), torch.device("cpu"), [2], ["eager"], repeats=0, clock="cpu")


def test_verdicts_and_page() -> None:
    rows = [{"variant": "eager", "batch": n, "seconds": 1.0, "speedup": 1.0, "rel_diff": 0.0} for n in (32, 128)]
    rows += [{"variant": "compile", "batch": 32, "seconds": 0.5, "speedup": 2.0, "rel_diff": 1e-6},
             {"variant": "compile", "batch": 128, "seconds": 0.5, "speedup": 2.0, "rel_diff": 1e-6},
             {"variant": "channels_last", "batch": 32, "seconds": 0.95, "speedup": 1.05, "rel_diff": 1e-7},
             {"variant": "channels_last", "batch": 128, "seconds": 0.8, "speedup": 1.25, "rel_diff": 1e-7},
             {"variant": "autocast_bf16", "batch": 32, "seconds": 0.5, "speedup": 2.0, "rel_diff": 0.05},
             {"variant": "autocast_bf16", "batch": 128, "seconds": 0.5, "speedup": 2.0, "rel_diff": 0.05}]  # fmt: skip
    verdict = unet_speed.verdicts(rows, tol=1e-3, tol_half=2e-2)
    assert verdict == {"compile": "keep", "channels_last": "drop (< 1.1x at N = 32)",
                       "autocast_bf16": "drop (rel. diff 5.0e-02 > 2e-02)"}  # fmt: skip
    meta = {"argv": "", "hardware": "cpu", "model": "embedded", "repeats": 1, "tol": 1e-3, "tol_half": 2e-2}
    text = unet_speed.render({"cpu": {"meta": meta, "rows": rows, "compile_s": {"compile": 12.5}}})
    assert "| compile | 500.0 (2.00x) | 500.0 (2.00x) | 1.0e-06 | 12.5 | keep |" in text
    assert "GPU table: pending" in text
