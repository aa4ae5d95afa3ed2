"""What makes the noise network's forward faster: eager fp32 against channels_last, torch.compile, autocast, CUDA graphs.

DDIMSigma-v0 spends 99% of an episode in the noise network's forward (docs/throughput.md), so a faster forward is
a faster env. For each batch size N this times one forward of the model (``x_t`` of shape ``(N, C, H, W)``, float32,
timesteps drawn in [1, 60], the region the env works in) under each variant, and compares its output with eager
fp32 on the same inputs:

- ``eager``: the reference (``torch.inference_mode``, float32, contiguous);
- ``channels_last``: weights and input in NHWC memory format;
- ``compile``: ``torch.compile(unet)`` (inductor, default mode); the one-off compile time is reported apart;
- ``compile_cudagraphs`` (CUDA only): ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs;
- ``autocast_bf16``: ``torch.autocast(device, torch.bfloat16)``; ``autocast_fp16`` (CUDA only).

A variant is *kept* (the ``verdict`` column) when it is at least 1.1x faster than eager at every N and its
largest relative difference, ``max |eps - eps_eager| / max |eps_eager|``, is at most ``--tol`` (1e-3 for float32
variants, 2e-2 for the half-precision ones: a DDIM step moves x_t by a multiple of eps, so this bounds the change
per step relative to the step). Times are medians over ``--repeats`` calls after two warm-up calls; on the CPU
``--clock cpu`` times the process's CPU time (with one torch thread, robust to a shared machine).

Results go to ``benchmarks/results/unet_speed.json`` (one record per device; a rerun on a device replaces it)
and ``docs/unet_speed.md`` (generated).

Usage::

    python -m benchmarks.unet_speed --device cpu --batch 32 128 --clock cpu
    python -m benchmarks.unet_speed --device cuda --batch 64 256 1024 4096
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "unet_speed.json"
DOC = ROOT / "docs" / "unet_speed.md"
VARIANTS = ("eager", "channels_last", "compile", "compile_cudagraphs", "autocast_bf16", "autocast_fp16")
_HALF = ("autocast_bf16", "autocast_fp16")


def _available(variant: str, device: torch.device) -> bool:
    return device.type == "cuda" or variant not in ("compile_cudagraphs", "autocast_fp16")


def _timer(device: torch.device, clock: str) -> Callable[[], float]:
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return now
    return time.process_time if clock == "cpu" else time.perf_counter


def _forward(net: Any, channels_last: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x.contiguous(memory_format=torch.channels_last) if channels_last else x, t).sample

    return forward


@contextlib.contextmanager
def _context(variant: str, device: torch.device) -> Iterator[None]:
    dtype = {"autocast_bf16": torch.bfloat16, "autocast_fp16": torch.float16}.get(variant)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        yield


def measure(model: str, device: torch.device, batches: list[int], variants: list[str], repeats: int, clock: str,
            seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Time each variant at each batch size; returns ``{"rows": [...], "compile_s": {...}}``.

    Each row: ``variant``, ``batch``, ``seconds`` (median per forward), ``speedup`` (eager / variant) and
    ``rel_diff`` (``max |eps - eps_eager| / max |eps_eager|``). ``eager`` is always timed first (the speed-ups'
    reference), whether listed or not. Raises ``ValueError`` for an unknown variant or ``repeats < 1``.
    """
    from robust_envs.diffusion.models import load_noise_model

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    variants = ["eager", *(v for v in variants if v != "eager")]
    now = _timer(device, clock)
    nm = load_noise_model(model, device=device)
    unet = nm.unet.eval()
    config: Any = getattr(unet, "config", None)
    if config is None:
        raise ValueError(f"{model!r}: the network has no diffusers config to read the sample shape from")
    size = config.sample_size
    shape = (int(config.in_channels), *((size, size) if isinstance(size, int) else tuple(size)))
    gen = torch.Generator().manual_seed(seed)
    rows, compile_s = [], {}
    nets: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for variant in variants:
        if not _available(variant, device):
            continue
        net: Any = load_noise_model(model, device=device).unet.eval()  # a copy per variant: no shared state
        if variant == "channels_last":
            net = net.to(memory_format=torch.channels_last)
        elif variant.startswith("compile"):
            net = torch.compile(net, mode="reduce-overhead" if variant == "compile_cudagraphs" else None)
        nets[variant] = _forward(net, channels_last=variant == "channels_last")
    for n in batches:
        x = torch.randn((n, *shape), generator=gen).to(device)
        t = torch.randint(1, 61, (n,), generator=gen).to(device)
        with _context("eager", device):
            ref = unet(x, t).sample.float()
        scale = float(ref.abs().max())
        eager_s = None
        for variant, net in nets.items():
            with _context(variant, device):
                start = now()
                out = net(x, t).float()  # first call: compiles where the variant compiles
                first = now() - start
                if variant.startswith("compile") and variant not in compile_s:
                    compile_s[variant] = round(first, 2)
                net(x, t)
                times = []
                for _ in range(repeats):
                    start = now()
                    net(x, t)
                    times.append(now() - start)
            seconds = statistics.median(times)
            eager_s = seconds if variant == "eager" else eager_s
            row = {"variant": variant, "batch": n, "seconds": seconds,
                   "speedup": (eager_s / seconds) if eager_s else None,
                   "rel_diff": float((out - ref).abs().max()) / scale}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    return {"rows": rows, "compile_s": compile_s}


def verdicts(rows: list[dict[str, Any]], tol: float, tol_half: float) -> dict[str, str]:
    """``keep`` / ``drop (reason)`` per variant (see the module docstring for the rule)."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        if variant == "eager":
            continue
        vr = [r for r in rows if r["variant"] == variant]
        limit = tol_half if variant in _HALF else tol
        slow = [r["batch"] for r in vr if (r["speedup"] or 0) < 1.1]
        off = max(r["rel_diff"] for r in vr)
        if off > limit:
            out[variant] = f"drop (rel. diff {off:.1e} > {limit:.0e})"
        elif slow:
            out[variant] = f"drop (< 1.1x at N = {', '.join(map(str, slow))})"
        else:
            out[variant] = "keep"
    return out


def render(data: dict[str, Any]) -> str:
    """Markdown page generated from the JSON (every device measured so far)."""
    lines = ["# The noise network's forward: what makes it faster", "",
             "Generated by `python -m benchmarks.unet_speed` into `benchmarks/results/unet_speed.json`; do not edit by "
             "hand. Speed-up = eager fp32 time / the variant's time at the same batch, in one run; rel. diff = "
             "max |eps - eps_eager| / max |eps_eager| on the same inputs. Rule: keep a variant at >= 1.1x at every "
             "batch and rel. diff within the tolerance.", ""]  # fmt: skip
    for dev, rec in data.items():
        m = rec["meta"]
        lines += [f"## {dev}", "", f"`python -m benchmarks.unet_speed {m['argv']}`. Hardware: {m['hardware']}. "
                  f"Model `{m['model']}`, {m['repeats']} timed calls per cell (median), tolerance {m['tol']:.0e} "
                  f"(float32) / {m['tol_half']:.0e} (autocast).", ""]  # fmt: skip
        batches = sorted({r["batch"] for r in rec["rows"]})
        lines += ["| variant | " + " | ".join(f"N = {n}: ms (speed-up)" for n in batches) + " | max rel. diff | "
                  "one-off compile (s) | verdict |", "|---|" + "---|" * (len(batches) + 3)]  # fmt: skip
        verdict = verdicts(rec["rows"], m["tol"], m["tol_half"])
        for variant in dict.fromkeys(r["variant"] for r in rec["rows"]):
            cells = []
            for n in batches:
                r = next((r for r in rec["rows"] if r["variant"] == variant and r["batch"] == n), None)
                cells.append("-" if r is None else f"{1e3 * r['seconds']:.1f} ({r['speedup']:.2f}x)")
            off = max(r["rel_diff"] for r in rec["rows"] if r["variant"] == variant)
            comp = rec["compile_s"].get(variant)
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {off:.1e} | {comp if comp is not None else '-'} | "
                         f"{verdict.get(variant, 'reference')} |")  # fmt: skip
        lines.append("")
    if "cuda" not in data:
        lines += [
            "GPU table: pending (no GPU has run this benchmark yet; `--device cuda` adds CUDA graphs and fp16).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: measure on ``--device``, store the record for that device and regenerate docs/unet_speed.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="CPU only: wall or process CPU time")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--tol-half", type=float, default=2e-2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ns = parser.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    if any(b < 1 for b in ns.batch):
        sys.exit(f"--batch sizes must be >= 1, got {ns.batch}")
    from benchmarks.leaderboard import atomic_write_json, read_json_or_warn

    res = measure(ns.model, device, ns.batch, ns.variants, ns.repeats, ns.clock)
    hardware = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
                f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
                f"{'wall (synchronised)' if device.type == 'cuda' else ns.clock} clock")  # fmt: skip
    data = (read_json_or_warn(RESULTS, "it will be replaced") or {}) if RESULTS.is_file() else {}
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    data[device.type] = {"meta": {"argv": argv_text, "hardware": hardware, "model": ns.model, "repeats": ns.repeats,
                                  "tol": ns.tol, "tol_half": ns.tol_half}, **res}  # fmt: skip
    atomic_write_json(RESULTS, data)
    DOC.write_text(render(data))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
