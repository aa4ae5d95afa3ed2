"""The generated pages of benchmarks.sigma_tuning and benchmarks.eval_cost, on synthetic records."""

from __future__ import annotations

from benchmarks import eval_cost, sigma_tuning


def _run(r1: float, a_by_t: list[float], **over) -> dict:
    return {"overrides": over, "total_timesteps": 8192, "train_s": 1, "r1": r1, "mean_a": sum(a_by_t) / len(a_by_t),
            "a_by_t": a_by_t, "final_log_std": -0.5}  # fmt: skip


def test_sigma_tuning_page_states_the_comparisons_it_has_data_for() -> None:
    consts = [{"a": a, "r1": 0.7 * a, "r1_std": 0.1, "return": 11 * a, "return_std": 12.0} for a in (0.5, 0.9, 1.0)]
    align = [{"schedule": s, "r1": r1, "return_paper": rp, "return_paper_std": 12.0, "return_delta": r1,
              "return_delta_std": 0.7} for s, r1, rp in (("a=1", 0.69, 11.0), ("1 for t > 10, 0 for t <= 10", 0.59, 10.2))]  # fmt: skip
    runs = {"B": _run(0.45, [0.7] * 20), "O": _run(0.64, [1.0] * 10 + [0.2] * 10, extractor="cnn"),
            "R": _run(0.63, [0.94] * 20, seed=0), "R1": _run(0.59, [0.76] * 20, seed=1),
            "S": _run(0.69, [1.0] * 20), "U1": _run(0.68, [0.99] * 20, seed=1), "U2": _run(0.52, [0.8] * 20, seed=2),
            "T1": _run(0.6, [0.8] * 20, seed=1), "U0": _run(0.69, [1.0] * 20)}  # fmt: skip
    marginal = {"r1_full": 0.69, "rows": [{"window": "t = 20..17", "steps": 4, "r1_off": 0.59, "gain": 0.1,
                                           "ci95": [0.06, 0.14]}]}  # fmt: skip
    text = sigma_tuning.render({"consts": consts, "align": align, "runs": runs, "marginal": marginal})
    assert "| t = 20..17 | 4 | +0.590 | +0.100 [+0.060, +0.140] | +0.0250 |" in text
    assert "| a=1 | +0.690 | +11.00 | +0.690 |" in text
    assert "ranks the time-only schedules as r_1 does" in text
    assert "adds r_1 +0.100 of +0.690" in text
    assert "Runs O reach the box edge" in text
    assert "R1 (seed 1): mean action 0.76, r_1 +0.590" in text
    assert "above that of the constant a = 0.9" in text  # O: 0.64 > 0.63 at a lower mean action
    assert "seed 1: R1 0.76 / +0.590, T1 0.80 / +0.600, U1 0.99 / +0.680; seed 2: U2 0.80 / +0.520" in text
    assert "mean action >= 0.95 in 2 of 3 seeds (U0, U1, U2); not in U2" in text


def test_eval_cost_page() -> None:
    rows = [{"arm": arm, "schedule": s, "seconds": sec} for arm, secs in (("off", (10, 10)), ("on", (11, 5)))
            for s, sec in zip(("a=0.25", "a=1"), secs, strict=True)]  # fmt: skip
    text = eval_cost.render({"meta": {"argv": "", "t_c": 20, "n_samples": 8, "hardware": "cpu"}, "rows": rows,
                             "max_abs_r1_diff": 0.0})  # fmt: skip
    assert "| a=0.25 (records the baseline) | 10.0 | 11.0 | 0.91x |" in text
    assert "| a=1 | 10.0 | 5.0 | 2.00x |" in text and "(2.00x faster)" in text
