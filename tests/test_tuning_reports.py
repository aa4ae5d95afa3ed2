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


def test_pages_say_which_rows_are_on_other_unet_weights(monkeypatch) -> None:
    """The stale-weights note is generated from the stored ids: present while a row is on other (or unrecorded)
    weights, naming it, and gone once every row is on the current ones (no hand-edited banner to forget)."""
    from benchmarks import sigma_headroom, weights_note

    monkeypatch.setattr(weights_note, "current_embedded_weights", lambda: "sha256:now")
    assert weights_note.stale_weights_note({"a": "sha256:now"}, "rows", "Rerun.") == []
    note = weights_note.stale_weights_note({"a": "sha256:now", "b": None, "c": "sha256:9d0b0ad7adf86139"}, "rows",
                                           "Rerun it.")[0]  # fmt: skip
    assert note.startswith("> **2 of 3 rows measured on other weights")
    assert "`b`: not recorded" in note and "`c`: `sha256:9d0b0ad7adf86139` (the 976-step weights" in note
    assert "`a`" not in note and "Rerun it." in note
    assert weights_note.short("sha256:now") == "current" and weights_note.short("sha256:abc") == "abc"

    consts = [{"a": 1.0, "r1": 0.7, "r1_std": 0.1, "return": 11.0, "return_std": 12.0}]
    runs = {"B": _run(0.45, [0.7] * 20), "Z0": {**_run(0.69, [1.0] * 20), "model_weights": "sha256:now"}}
    text = sigma_tuning.render({"consts": consts, "runs": runs, "model_weights": {"consts": "sha256:now"}})
    assert "> **1 of 3 records measured on other weights" in text and "`run B`: not recorded" in text
    runs["B"]["model_weights"] = "sha256:now"
    assert "measured on other weights" not in sigma_tuning.render({"consts": consts, "runs": runs,
                                                                    "model_weights": {"consts": "sha256:now"}})  # fmt: skip

    record = {"threat": "shift", "t_c": 20, "pool": 4, "episodes": 8, "n_images": 4, "mean_r1": {"0": 0.0, "1": 0.3},
              "best_constant": 1.0, "best_constant_r1": 0.3, "crossfit_gain": 0.0, "crossfit_gain_ci95": [-0.1, 0.1],
              "oracle_gain": 0.05, "chosen": {"0": 1, "1": 7}, "seconds": 1, "command": "python -m x",
              "hardware": "cpu"}  # fmt: skip
    old = sigma_headroom.render({"shift/tc20/pool4x2": record})
    assert "> **1 of 1 rows measured on other weights" in old and "| 976-step (not recorded) |" in old
    assert "(UNet weights 976-step (not recorded), not the current ones)" in old
    new = sigma_headroom.render({"shift/tc20/pool4x2": {**record, "model_weights": "sha256:now"}})
    assert "measured on other weights" not in new and "| 1 | current |" in new and "not the current ones" not in new


def test_sigma_tuning_leaves_out_a_demo_run_in_another_cell(tmp_path, monkeypatch) -> None:
    import json

    demo = {"rows": [{"schedule": "PPO", "n": 200, "mean_eta": 0.7, "mean_r1": 0.05, "r1_ci95": [0.02, 0.08]},
                     {"schedule": "a=1", "mean_r1": -0.01}],
            "meta": {"env_kwargs": {"t_c": 10, "attack": "shift"}}}  # fmt: skip
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "demo_eval.json").write_text(json.dumps(demo))
    monkeypatch.setattr(sigma_tuning, "__file__", str(tmp_path / "benchmarks" / "sigma_tuning.py"))
    assert sigma_tuning._demo_sentence() == ""
    demo["meta"]["env_kwargs"] = {"t_c": 20, "attack": "gaussian"}
    (tmp_path / "docs" / "demo_eval.json").write_text(json.dumps(demo))
    assert "mean action 0.70, r_1 +0.050 [+0.020, +0.080], whose CI reaches a = 1's -0.010" in sigma_tuning._demo_sentence()
