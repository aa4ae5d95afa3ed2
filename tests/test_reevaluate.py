"""Protocol versions in the leaderboard: re-evaluation of stale entries and the tables that keep versions apart."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import benchmarks.evaluate as evaluate_mod
from benchmarks import leaderboard
from benchmarks.evaluate import EvalConfig, decode_bits, encode_bits
from robust_envs.attacks import PROTOCOL_VERSION, AttackSpec
from robust_envs.attacks import protocol_suite as real_suite

N_EVAL, N_AA = 30, 20


def _fast_suite(*args: Any, **kwargs: Any) -> list[AttackSpec]:
    """The protocol's attacks (same keys, norms and radii) with tiny budgets."""
    out = []
    for s in real_suite(*args, **kwargs):
        if s.attack in ("autoattack", "autoattack_l2"):
            s = dataclasses.replace(s, steps=3, options={**s.options, "square_queries": 20})
        elif s.attack == "apgd_l1":
            s = dataclasses.replace(s, steps=6, options={"n_target_classes": 1})
        elif s.attack == "square":
            s = dataclasses.replace(s, options={"n_queries": 20})
        else:
            s = dataclasses.replace(s, steps=min(s.steps, 3))
        out.append(s)
    return out


def _make_entries(tmp: Path, version: int, seeds: tuple[int, ...]) -> list[Path]:
    eval_cfg = EvalConfig(n_eval=N_EVAL, n_autoattack=N_AA, square_queries=20, protocol_version=version)
    specs = [
        leaderboard.EntrySpec(
            method="standard",
            dataset="digits",
            seed=s,
            results_dir=str(tmp / "results"),
            checkpoint_dir=str(tmp / "ckpt"),
            train_overrides=(("epochs", 1),),
            eval_config=tuple(dataclasses.asdict(eval_cfg).items()),
        )  # fmt: skip
        for s in seeds
    ]
    leaderboard.run_leaderboard(specs)
    return [s.result_path() for s in specs]


@pytest.fixture()
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_mod, "protocol_suite", _fast_suite)


def test_bits_round_trip() -> None:
    import numpy as np

    mask = np.random.default_rng(0).random(1000) < 0.3
    assert decode_bits(encode_bits(mask), 1000).tolist() == mask.tolist()
    assert len(encode_bits(mask)) == 250


@pytest.mark.slow
def test_reevaluate_resumes_after_interruption_and_leaves_current_entries_alone(
    tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = _make_entries(tmp_path, 1, (0, 1))
    current = _make_entries(tmp_path, PROTOCOL_VERSION, (2,))
    for p in stale:
        rec = json.loads(p.read_text())
        assert rec["protocol_version"] == 1 and "autoattack_l2" not in rec["attack_acc"]
        rec.pop("protocol_version")  # entries written before versioning have no field: they count as version 1
        p.write_text(json.dumps(rec))
    before = {p: p.read_bytes() for p in [*stale, *current]}
    # interrupt the run while it evaluates the second stale entry
    calls = {"n": 0}
    real_evaluate = leaderboard.evaluate

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(leaderboard, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        leaderboard.reevaluate(tmp_path / "results", tmp_path / "ckpt")
    first = json.loads(stale[0].read_text())
    assert first["protocol_version"] == PROTOCOL_VERSION and "autoattack_l2" in first["attack_acc"]
    assert first["reevaluated"]["from_protocol"] == 1
    assert first["reevaluated"]["previous"]["norm_acc"] == json.loads(before[stale[0]])["norm_acc"]
    assert first["train_time_s"] == json.loads(before[stale[0]])["train_time_s"]  # training fields kept
    assert stale[1].read_bytes() == before[stale[1]]  # interrupted entry: untouched, still valid
    assert current[0].read_bytes() == before[current[0]]
    assert sorted(f.name for f in stale[0].parent.iterdir()) == sorted(p.name for p in [*stale, *current])
    # the new record has the fingerprint `run` computes for the same entry under the current protocol
    spec = leaderboard._spec_of(first, tmp_path / "results", tmp_path / "ckpt", 1)
    assert spec.is_done()
    # resume: only the remaining stale entry is evaluated
    monkeypatch.setattr(leaderboard, "evaluate", real_evaluate)
    after_first = stale[0].read_bytes()
    assert leaderboard.reevaluate(tmp_path / "results", tmp_path / "ckpt") == ["digits/standard_seed1.json"]
    assert stale[0].read_bytes() == after_first and current[0].read_bytes() == before[current[0]]
    assert json.loads(stale[1].read_text())["protocol_version"] == PROTOCOL_VERSION
    assert leaderboard.reevaluate(tmp_path / "results", tmp_path / "ckpt") == []


def test_reevaluate_refuses_a_checkpoint_that_does_not_match(tmp_path: Path, fast: None) -> None:
    (path,) = _make_entries(tmp_path, 1, (0,))
    rec = json.loads(path.read_text())
    rec["checkpoint"]["sha256"] = "0" * 64
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="sha256"):
        leaderboard.reevaluate_entry(path, tmp_path / "ckpt")
    rec["checkpoint"]["sha256"] = json.loads(path.read_text())["checkpoint"]["sha256"]
    (tmp_path / "ckpt" / "digits" / "standard_seed0.pt").unlink()
    with pytest.raises(FileNotFoundError, match="never retrains"):
        leaderboard.reevaluate_entry(path, tmp_path / "ckpt")


def test_tables_keep_protocol_versions_apart(tmp_path: Path, fast: None) -> None:
    _make_entries(tmp_path, 1, (0, 1))
    _make_entries(tmp_path, PROTOCOL_VERSION, (2,))
    paths = leaderboard.build_tables(tmp_path / "results", tmp_path / "docs")
    md = paths["md"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| standard |")]
    assert len(rows) == 2
    assert f"| v{PROTOCOL_VERSION} |" in rows[0] and "| 1 |" in rows[0]
    assert "| v1 (re-evaluation pending) |" in rows[1] and "| 2 |" in rows[1]
    assert "not run" in rows[0] and "v1: L2 = PGD-50, L1 = SLIDE" in md
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("dataset,method,protocol_version") and "crosscheck_flags" in csv_lines[0]
    assert len(csv_lines) == 3


def _reevaluated(method: str, seed: int, old: dict[str, float], new: dict[str, float]) -> dict[str, Any]:
    """A hand-made v2 record re-evaluated from v1: ``old`` / ``new`` give L2, L1, union and average accuracy."""

    def fields(v: dict[str, float]) -> dict[str, Any]:
        return {"norm_acc": {"Linf": 0.5, "L2": v["L2"], "L1": v["L1"]}, "union_acc": v["union"],
                "average_acc": v["avg"]}  # fmt: skip

    previous = {"protocol_version": 1, **fields(old)}
    return {"method": method, "dataset": "toy", "seed": seed, "robust_acc": 0.5, "protocol_version": PROTOCOL_VERSION,
            **fields(new), "reevaluated": {"from_protocol": 1, "previous": previous, "history": [previous]}}  # fmt: skip


def test_protocol_change_reports_means_and_swapped_orders() -> None:
    a_old, a_new = {"L2": 0.40, "L1": 0.30, "union": 0.30, "avg": 0.40}, {"L2": 0.20, "L1": 0.10, "union": 0.10, "avg": 0.27}
    b_old, b_new = {"L2": 0.35, "L1": 0.25, "union": 0.25, "avg": 0.37}, {"L2": 0.34, "L1": 0.24, "union": 0.24, "avg": 0.36}
    records = [_reevaluated("pgd_at", s, a_old, a_new) for s in (0, 1)]
    records += [_reevaluated("trades", s, b_old, b_new) for s in (0, 1)]
    # a v1 entry never re-evaluated and another data set's entry are left out
    records.append({"method": "standard", "dataset": "toy", "seed": 0, "robust_acc": 0.1, "protocol_version": 1})
    records.append({**_reevaluated("msd", 0, a_old, b_new), "dataset": "other"})
    md = leaderboard.protocol_change(records, "toy")
    assert "| pgd_at | 2 | 40.0 -> 20.0 (-20.0) | 30.0 -> 10.0 (-20.0) |" in md
    assert "| trades | 2 | 35.0 -> 34.0 (-1.0) |" in md and "| standard |" not in md and "| msd |" not in md
    # v1 ranked pgd_at first in every column, v2 trades: each column names the swap, outside noise (equal seeds)
    assert md.count("swapped: pgd_at / trades.") == 4
    assert "- L2: v1 pgd_at > trades; v2 trades > pgd_at;" in md
    assert leaderboard.protocol_change(records, "nothing") == ""


def _checked(method: str, seed: int, version: int, norms: dict[str, tuple[float, float, int, int]],
             flag: bool = False) -> dict:  # fmt: skip
    """An entry at ``version`` with a cross-check made against ``version``: norm -> (art, protocol, b, c)."""
    return {"method": method, "dataset": "toy", "seed": seed, "protocol_version": version,
            "crosscheck": {"library": "adversarial-robustness-toolbox 1.20.1", "protocol_version": version,
                           "flag": flag,
                           "norms": {k: {"art_acc": a, "protocol_acc": p, "paired": True, "b": b, "c": c,
                                         "flag": flag and k == "L2"} for k, (a, p, b, c) in norms.items()}}}  # fmt: skip


def test_crosscheck_summary_counts_current_checks_per_norm() -> None:
    records = [
        _checked("pgd_at", 0, 2, {"Linf": (0.50, 0.50, 1, 1), "L2": (0.40, 0.45, 20, 5)}, flag=True),
        _checked("trades", 0, 2, {"Linf": (0.52, 0.50, 0, 6), "L2": (0.46, 0.45, 0, 3)}),
        # a check made before the entry's re-evaluation (v1 check, v2 entry) does not count
        {**_checked("msd", 0, 1, {"L2": (0.0, 0.9, 270, 0)}, flag=True), "protocol_version": 2},
        {"method": "standard", "dataset": "toy", "seed": 0, "protocol_version": 2},
    ]
    md = leaderboard.crosscheck_summary(records, "toy")
    assert "2 of 4 entries checked" in md and "flagged: pgd_at_seed0." in md and "msd" not in md
    assert "| Linf | 2 | +1.0 | +0.0 (pgd_at_seed0) | 1 (1) | 7 | 0 |" in md
    assert "| L2 | 2 | -2.0 | -5.0 (pgd_at_seed0) | 20 (1) | 8 | 1 |" in md
    assert "| L1 |" not in md
    assert leaderboard.crosscheck_summary(records, "nothing") == ""
