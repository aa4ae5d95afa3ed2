"""benchmarks/attack_effect.py: an interrupted run's page names what is not measured yet."""

from __future__ import annotations

from benchmarks import attack_effect as ae


def _row(t_c: int) -> dict:
    ci = {"mean": 3.9, "ci95": 0.05}
    return {"t_c": t_c, "none": ci, "attack": ci, "difference": {"mean": 0.0, "ci95": 0.0}}


def test_partial_run_names_the_missing_rows() -> None:
    meta = {"argv": "--n 8 --t-c 10 20 --scales 0.1 2 --sweep-t-c 20", "model": "embedded", "evaluator": "levels",
            "stride": 50, "n": 8, "hardware": "h", "sweep_t_c": 20}  # fmt: skip
    data = {"meta": meta, "by_t_c": [_row(10)], "sweep": [{"t_c": 20, "scale": 0.1, "clip": 0.5, **_row(20),
                                                            "mean_abs_pixel_change": 0.0}]}  # fmt: skip
    assert ae.pending(data) == "t_c 20; sweep scales 2"
    assert "Not measured yet: t_c 20; sweep scales 2." in ae.render(data)
    data["by_t_c"].append(_row(20))
    data["sweep"].append({**data["sweep"][0], "scale": 2.0, "clip": 10.0})
    assert ae.pending(data) is None and "Partial run" not in ae.render(data)
