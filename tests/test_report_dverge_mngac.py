"""The DVERGE / MNG-AC doc generator on fake leaderboard JSONs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report_dverge_mngac as rep


def _entry(method: str, seed: int, union: float, extra: dict | None = None) -> dict:
    return {
        "method": method, "dataset": "fashion_mnist", "seed": seed, "clean_acc": 0.8, "union_acc": union,
        "average_acc": union + 0.1, "robust_acc": 0.5, "autoattack_acc": 0.5,
        "norm_acc": {"Linf": 0.5, "L2": 0.4, "L1": union}, "attack_acc": {}, "masking": {"any": False},
        "train_time_s": 100.0 + seed, "extra": extra or {}, "train_cpu_s": 360.0, "hardware": {"torch_threads": 1},
        "train_config": {"epochs": 3, "max_train_samples": 30000 if method == "adv_avg" else None},
    }  # fmt: skip


def _dverge_extra(mix: float) -> dict:
    sub = {"clean": 0.8, "fgsm": 0.2, "pgd_linf": 0.05, "pgd_l2": 0.3}
    return {
        "n_points": 300, "attacks": {"fgsm": "Linf eps 0.1"},
        "accuracy": {"submodel_0": sub, "submodel_1": sub, "submodel_2": sub,
                     "mixture": {"clean": 0.85, "fgsm": mix, "pgd_linf": mix, "pgd_l2": mix}},
        "transfer": [[0.05, 0.6, 0.6], [0.6, 0.05, 0.6], [0.6, 0.6, 0.05]],
    }  # fmt: skip


def test_report_from_fake_results(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "fashion_mnist"
    folder.mkdir(parents=True)
    entries = [_entry("pgd_at", s, 0.30 + 0.01 * s) for s in range(3)]
    entries += [_entry("mng_ac", s, 0.45 + 0.01 * s) for s in range(3)]
    entries += [_entry("adv_avg", 0, 0.40)]  # seeds 1, 2 missing; adv_max missing entirely
    entries += [_entry("dverge", s, 0.1, _dverge_extra(0.5)) for s in range(2)]
    for e in entries:
        (folder / f"{e['method']}_seed{e['seed']}.json").write_text(json.dumps(e))
    docs = tmp_path / "docs"
    assert rep.main(["--results-dir", str(tmp_path / "results"), "--docs-dir", str(docs)]) == 0
    mng = (docs / "mng_ac.md").read_text()
    assert "46.0 ± 1.0 (n=3)" in mng and "31.0 ± 1.0 (n=3)" in mng
    assert "`adv_avg` seed(s) 1, 2" in mng and "`adv_max` seed(s) 0, 1, 2" in mng
    assert "MNG-AC 46.0 ± 1.0 (n=3) is **above** `pgd_at`" in mng
    assert "**holds** here" in mng
    # CPU s per 1,000 images: mng_ac 360 / (60,000 x 3 / 1,000) = 2.00, adv_avg 360 / 90 = 4.00
    assert "| 60,000 x 3 | 2.00 (3) |" in mng and "| 30,000 x 3 | 4.00 (1) |" in mng
    assert "MNG-AC takes **0.50x** the CPU time per training image of `adv_avg`" in mng
    dv = (docs / "dverge.md").read_text()
    assert "`dverge` seed(s) 2" in dv and "`dverge_advt` seed(s) 0, 1, 2" in dv
    assert "pgd_linf: mixture 50.0 ± 0.0 (n=2) is **above** the best submodel" in dv
    assert "above every submodel in 2 of 2 seeds" in dv
    assert "vulnerabilities are diversified" in dv
    assert "No `dverge_advt` entries" in dv


def test_report_with_no_results(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    assert rep.main(["--results-dir", str(tmp_path / "none"), "--docs-dir", str(docs)]) == 0
    assert "cannot be checked yet" in (docs / "mng_ac.md").read_text()
    assert "No `dverge` entries" in (docs / "dverge.md").read_text()


def test_attack_passes_from_configs() -> None:
    steps = {"steps_linf": 7, "steps_l2": 7, "steps_l1": 10}
    assert rep.attack_passes("msd", {"msd_steps": 10}) == "10 fwd+bwd + 30 fwd"
    assert rep.attack_passes("adv_max", steps) == "24 fwd+bwd (all three norms)"
    assert rep.attack_passes("mng_ac", steps).startswith("8.0 fwd+bwd on average")
    assert rep.attack_passes("pgd_at", {"attack_steps": 7}) == "7 fwd+bwd"
    assert rep.attack_passes("standard", {}) == "0"
