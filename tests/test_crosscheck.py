"""The second-library (ART) cross-check of leaderboard entries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import crosscheck, leaderboard
from benchmarks.evaluate import encode_bits
from robust_envs.attacks import PROTOCOL_VERSION
from tests.test_reevaluate import _make_entries, fast  # noqa: F401  (fixture)


def test_noninferiority_rule_on_hand_made_outcomes() -> None:
    prot = np.array([True] * 60 + [False] * 40)
    # ART breaks 10 points the protocol left robust: 10 points below, far beyond the 2-point margin
    art = prot.copy()
    art[:10] = False
    res = crosscheck.noninferiority_test(art, prot)
    assert res["paired"] and res["b"] == 10 and res["c"] == 0 and res["diff"] == pytest.approx(-0.10)
    assert res["flag"] and res["p_value"] < 0.05
    # 2 points below: inside the margin, no flag
    art = prot.copy()
    art[:2] = False
    assert not crosscheck.noninferiority_test(art, prot)["flag"]
    # 4 points below on 100 points, with discordance both ways: within sampling error of the margin, no flag
    art = prot.copy()
    art[:8] = False
    art[60:64] = True
    res = crosscheck.noninferiority_test(art, prot)
    assert res["diff"] == pytest.approx(-0.04) and not res["flag"] and res["p_value"] > 0.05
    # ART weaker than the protocol is never flagged
    assert not crosscheck.noninferiority_test(prot | True, prot)["flag"]
    # unpaired (entries without per-point outcomes): independent proportions, a larger standard error
    res = crosscheck.noninferiority_test(art[:50], protocol_acc=0.9, protocol_n=500)  # 84 % vs 90 %: within error
    assert not res["paired"] and res["diff"] == pytest.approx(-0.06) and not res["flag"]
    res = crosscheck.noninferiority_test(np.arange(50) < 30, protocol_acc=0.9, protocol_n=500)  # 60 % vs 90 %
    assert res["flag"] and res["z"] < -1.645
    with pytest.raises(ValueError, match="per-point"):
        crosscheck.noninferiority_test(art)


def test_check_positions_are_seeded_and_inside_the_combined_points() -> None:
    rec = {"n_eval": 1000, "n_combined": 500}
    a = crosscheck.check_positions(rec, 300, 0)
    assert np.array_equal(a, crosscheck.check_positions(rec, 300, 0)) and len(set(a.tolist())) == 300
    assert a.max() < 500 and np.all(np.diff(a) > 0)
    assert np.array_equal(crosscheck.check_positions(rec, 900, 0), np.arange(500))


@pytest.mark.slow
def test_crosscheck_flags_an_inflated_entry_and_shows_it_in_the_tables(tmp_path: Path, fast: None) -> None:  # noqa: F811
    pytest.importorskip("art", reason="the cross-check needs ART: pip install 'robust-envs[art]'")
    honest, inflated, unpaired = _make_entries(tmp_path, PROTOCOL_VERSION, (0, 1, 2))
    for path, keep_per_point in ((inflated, True), (unpaired, False)):
        rec = json.loads(path.read_text())
        n = rec["per_point"]["n"]
        for key, spec in rec["attacks"].items():  # claim every clean-correct point survives every L2 attack
            if spec["norm"] == "L2":
                rec["per_point"]["correct"][key] = encode_bits(np.ones(n, dtype=bool))
        rec["norm_acc"]["L2"] = rec["clean_acc"]
        if not keep_per_point:
            rec.pop("per_point")
        path.write_text(json.dumps(rec))
    cfg = crosscheck.CrossCheckConfig(n_points=20, max_iter=10, norms=("L2",))
    done = crosscheck.crosscheck_all(tmp_path / "results", tmp_path / "ckpt", cfg)
    assert len(done) == 3
    results = {p: json.loads(p.read_text())["crosscheck"] for p in (honest, inflated, unpaired)}
    assert results[inflated]["flag"] and results[inflated]["flagged_norms"] == ["L2"]
    assert results[inflated]["norms"]["L2"]["paired"] and not results[unpaired]["norms"]["L2"]["paired"]
    assert results[unpaired]["flag"]
    assert results[honest]["norms"]["L2"]["paired"]
    assert "adversarial-robustness-toolbox" in results[honest]["library"]
    # the check is stored beside the numbers and the tables count it; a second call finds nothing left to do
    assert crosscheck.crosscheck_all(tmp_path / "results", tmp_path / "ckpt", cfg) == []
    md = leaderboard.build_tables(tmp_path / "results", tmp_path / "docs")["md"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| standard |"))
    flagged = sum(r["flag"] for r in results.values())
    assert row.rstrip().endswith(f"| {flagged}/3 flagged |")


@pytest.mark.slow
def test_art_catches_a_gradient_masked_model_that_the_ce_attack_misses() -> None:
    """Saturated softmax (logits x 1e4): PGD-L2 on the cross-entropy gets no gradient; ART's DLR loss is scale-free."""
    pytest.importorskip("art", reason="the cross-check needs ART: pip install 'robust-envs[art]'")
    from benchmarks.evaluate import EvalConfig, eval_subset, evaluate
    from robust_envs.attacks import protocol_suite, radii_for
    from robust_envs.data import load_dataset
    from tests._classifier_models import ScaledLogits, trained_digits_model

    masked = ScaledLogits(trained_digits_model("standard"), 1e4).eval()
    sub = eval_subset(load_dataset("digits", "test"), 40, seed=0)
    suite = [s for s in protocol_suite("digits", autoattack=False) if s.key in ("fgsm", "pgd_l2")]
    res = evaluate(masked, sub, "digits", EvalConfig(n_eval=40, autoattack=False), suite=suite)
    protocol = res.clean & res.table["pgd_l2"]
    cfg = crosscheck.CrossCheckConfig(n_points=40, max_iter=20, norms=("L2",))
    art, _, _ = crosscheck.art_robust(masked, sub.images, sub.labels, {"L2": radii_for("digits").eps_l2}, cfg)
    verdict = crosscheck.noninferiority_test(art["L2"], protocol)
    assert verdict["flag"], verdict


def test_crosscheck_skips_entries_awaiting_reevaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    (tmp_path / "toy").mkdir()
    for seed, version in ((0, 1), (1, PROTOCOL_VERSION)):
        rec = {"method": "standard", "seed": seed, "norm_acc": {}, "eval_config": {}, "protocol_version": version}
        (tmp_path / "toy" / f"standard_seed{seed}.json").write_text(json.dumps(rec))
    checked: list[str] = []

    def fake_entry(path: Path, checkpoint_dir: Path, cfg: crosscheck.CrossCheckConfig) -> dict:
        checked.append(path.name)
        return {"norms": {}, "flag": False, "time_s": 0.0}

    monkeypatch.setattr(crosscheck, "crosscheck_entry", fake_entry)
    cfg = crosscheck.CrossCheckConfig()
    assert crosscheck.crosscheck_all(tmp_path, tmp_path, cfg) == ["toy/standard_seed1.json"]
    assert "standard_seed0.json: skipped, evaluated under protocol v1" in caplog.text
    checked.clear()
    crosscheck.crosscheck_all(tmp_path, tmp_path, cfg, include_stale=True)
    assert checked == ["standard_seed0.json", "standard_seed1.json"]
