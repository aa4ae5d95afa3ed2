"""The DDIMSigma-v0 benchmark runner: entries, resume after a kill, the report, the agents on the env."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import sigma_benchmark as sb

REPO = Path(__file__).resolve().parent.parent


def _args(tiny_unet_dir: Path, tmp_path: Path) -> list[str]:
    return ["--model", str(tiny_unet_dir), "--evaluator", "piqe", "--stride", "400", "--n-eval", "4",
            "--timesteps", "16", "--results-dir", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip


@pytest.mark.slow
def test_agents_and_references_run_resume_and_report(tiny_unet_dir: Path, tmp_path: Path) -> None:
    args = ["run", "--agents", "ppo", "sac", "--t-c", "2", "--threats", "seed", "--seeds", "0",
            *_args(tiny_unet_dir, tmp_path)]  # fmt: skip
    sb.main(args)
    out = tmp_path / "results" / "seed" / "tc2"
    ref = json.loads((out / "reference.json").read_text())
    names = [r["schedule"] for r in ref["rows"]]
    assert names == ["a=0.25", "a=0.5", "a=0.75", "a=1", "random", "defence=round", "defence=share"]
    assert all(np.isfinite(r["mean_r1"]) for r in ref["rows"]) and all(r["n"] == 4 for r in ref["rows"])
    ppo = json.loads((out / "ppo_seed0.json").read_text())
    assert ppo["row"]["n"] == 4 and len(ppo["r1"]) == 4 and ppo["train_args"]["algo"] == "ppo"
    assert ppo["hardware"]["device"] == "cpu" and ppo["fingerprint"]
    assert (tmp_path / "ckpt" / "seed" / "tc2" / "ppo_seed0" / "policy.zip").is_file()
    before = {p: p.read_bytes() for p in out.glob("*.json")}
    sb.main(args)  # everything done: nothing rerun
    assert {p: p.read_bytes() for p in out.glob("*.json")} == before
    (out / "sac_seed0.json").write_text('{"truncated": ')  # a corrupt entry is named and redone
    sb.main(args)
    assert json.loads((out / "sac_seed0.json").read_text())["agent"] == "sac"
    docs = tmp_path / "docs"
    page = sb.build_report(tmp_path / "results", docs)
    text = page.read_text()
    assert "| 2 | ppo | 1 |" in text and "claim 1" in text and (docs / "figures" / "sigma_fig7.png").is_file()
    assert all(len(r["r1"]) == 4 for r in ref["rows"])  # per-sample r_1 of every reference: agents compared paired
    best = max((r for r in ref["rows"] if r["schedule"].startswith("a=")), key=lambda r: r["mean_r1"])
    diff = np.asarray(ppo["r1"]) - np.asarray(best["r1"])
    assert f"seed 0: {diff.mean():+.3f} [" in text


@pytest.mark.slow
def test_resume_after_kill_loses_no_finished_entry(tiny_unet_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.sigma_benchmark", "run", "--agents", "ppo", "--t-c", "2",
           "--threats", "seed", "--seeds", "0", "1", "2", *_args(tiny_unet_dir, tmp_path), "--no-references"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    out = tmp_path / "results" / "seed" / "tc2"
    deadline = time.monotonic() + 600
    while not list(out.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    exited = proc.poll()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert exited is None, f"the run ended before it could be killed (rc {exited}): {log.read_text()[-2000:]}"
    finished = {f.name: f.read_bytes() for f in out.glob("*.json")}
    assert 1 <= len(finished) < 3, f"kill should land mid-run, found {sorted(finished)}"
    for blob in finished.values():
        json.loads(blob)
    sb.main(cmd[cmd.index("run"):])
    assert sorted(f.name for f in out.glob("*.json")) == [f"ppo_seed{s}.json" for s in range(3)]
    for name, blob in finished.items():
        assert (out / name).read_bytes() == blob


def test_entry_validation_and_fingerprints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="threat must be one of"):
        sb.SigmaEntry("ppo", 20, "loud")
    with pytest.raises(ValueError, match="agent must be 'reference' or one of"):
        sb.SigmaEntry("dqn", 20, "seed")
    a = sb.SigmaEntry("ppo", 20, "seed", seed=0)
    assert a.fingerprint() == sb.SigmaEntry("ppo", 20, "seed", seed=0, device="cuda").fingerprint()
    assert a.fingerprint() != sb.SigmaEntry("ppo", 20, "seed", seed=1).fingerprint()
    assert a.fingerprint() != sb.SigmaEntry("ppo", 20, "shift", seed=0).fingerprint()
    # a changed Args default (not pinned in AGENTS) changes the fingerprint too: the entry would be retrained
    import agents.ppo_sigma as ps

    before = a.fingerprint()
    changed = dataclasses.make_dataclass("Args", [("gae_lambda", float, dataclasses.field(default=0.95))], bases=(ps.Args,))
    monkeypatch.setattr(ps, "Args", changed)
    assert sb.SigmaEntry("ppo", 20, "seed", seed=0).training_args()["gae_lambda"] == 0.95
    assert before != sb.SigmaEntry("ppo", 20, "seed", seed=0).fingerprint()
    assert sb.SigmaEntry("reference", 20, "seed").training_args() == {}
    # 'auto' defaults are resolved per learner: PPO's entropy bonus is a number, SAC's stays SB3's learnt one
    monkeypatch.undo()
    assert a.training_args()["ent_coef"] == str(ps.PPO_ENT_COEF)
    assert sb.SigmaEntry("sac", 20, "seed", seed=0).training_args()["ent_coef"] == "auto"
    record = {"kind": "agent", "agent": "ppo", "t_c": 20, "threat": "seed", "seed": 0, "n_eval": a.n_eval,
              "eval_seed": a.eval_seed, "env_kwargs": a.env_kwargs(), "train_args": dataclasses.asdict(a._args()),
              "fingerprint": a.fingerprint(), "name": a.name, "weights": a.weights()}  # fmt: skip
    assert sb.stale_reason(record) is None
    ref = sb.SigmaEntry("reference", 20, "seed")
    ref_record = {"kind": "reference", "t_c": 20, "threat": "seed", "n_eval": ref.n_eval, "eval_seed": ref.eval_seed,
                  "env_kwargs": ref.env_kwargs(), "fingerprint": ref.fingerprint(), "weights": ref.weights()}  # fmt: skip
    assert sb.stale_reason(ref_record) is None
    unrecorded = {k: v for k, v in ref_record.items() if k != "weights"}
    assert "made before entries recorded" in str(sb.stale_reason({**unrecorded, "fingerprint": "0"}))
    assert "not an entry of today's grid" in str(sb.stale_reason({"kind": "agent"}))
    monkeypatch.setattr(ps, "PPO_ENT_COEF", 0.0)
    assert before != a.fingerprint() and a.training_args()["ent_coef"] == "0.0"
    assert sb.stale_reason(record) == "ent_coef: auto -> 0.0"  # the report names what moved
    assert sb.stale_reason(ref_record) is None  # the references do not train: PPO's defaults do not touch them
    assert a.name == "seed/tc20/ppo_seed0" and sb.SigmaEntry("reference", 20, "seed").name == "seed/tc20/reference"


def test_retrained_weights_make_an_entry_stale(tmp_path: Path) -> None:
    """A model retrained in place (same folder, new weights) changes the fingerprint and the report says why."""
    import shutil

    from robust_envs.diffusion.models import EMBEDDED_UNET

    folder = tmp_path / "unet"
    shutil.copytree(EMBEDDED_UNET, folder)
    entry = sb.SigmaEntry("reference", 20, "seed", model=str(folder))
    assert entry.weights()["model"] == sb.SigmaEntry("reference", 20, "seed").weights()["model"]  # same bytes
    record = {"kind": "reference", "t_c": 20, "threat": "seed", "n_eval": entry.n_eval, "eval_seed": entry.eval_seed,
              "env_kwargs": entry.env_kwargs(), "fingerprint": entry.fingerprint(), "weights": entry.weights()}  # fmt: skip
    assert sb.stale_reason(record) is None
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")  # one float's bytes changed
    os.utime(weights, (time.time() + 5, time.time() + 5))  # a new modification time: the cached digest is redone
    assert sb.SigmaEntry("reference", 20, "seed", model=str(folder)).fingerprint() != record["fingerprint"]
    assert str(sb.stale_reason(record)).startswith("model weights sha256:")


def test_weights_digest_names_missing_weights(tmp_path: Path) -> None:
    from robust_envs.fileio import weights_digest

    (tmp_path / "a.safetensors").write_bytes(b"abc")
    (tmp_path / "notes.txt").write_text("not weights")
    first = weights_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("edited")  # only weight files count
    assert weights_digest(tmp_path) == first and len(first) == 16
    assert weights_digest(tmp_path / "a.safetensors") != weights_digest(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weights file"):
        weights_digest(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        weights_digest(tmp_path / "missing")


def test_time_left_estimate_scales_evaluation_with_t_c() -> None:
    hw = {"load_avg_15min": 2.5}
    common = {"threat": "seed", "t_c": 20, "seed": 0, "hardware": hw}
    records = [{"agent": "reference", "eval_time_s": 2196.0, **common},
               {"agent": "ppo", "eval_time_s": 1196.0, "train_time_s": 700.0, **common}]  # fmt: skip
    # evaluation work: (1000 - t_c) / 50 prefix forwards + 8 (reference) or 2 (agent) forwards per step below t_c
    assert sb._eval_work("reference", 20) == pytest.approx(179.6) and sb._eval_work("agent", 60) == pytest.approx(138.8)
    assert sb.estimate_seconds_left(records, [("reference", 20)]) == pytest.approx(2196.0)
    assert sb.estimate_seconds_left(records, [("reference", 60)]) == pytest.approx(2196.0 / 179.6 * 498.8)
    assert sb.estimate_seconds_left(records, [("ppo", 60)]) == pytest.approx(700.0 + 1196.0 / 59.6 * 138.8)
    assert sb.estimate_seconds_left(records, [("sac", 20)]) is None  # no SAC entry measured yet
    text = "\n".join(sb._progress(records))
    assert "82 entries left. At the measured costs" in text and "reference (11), ppo (35) entries take about" in text
    assert "Not estimated yet (no finished entry of that agent): sac, tqc, recurrent_ppo." in text
    records += [{"agent": a, "eval_time_s": 1196.0, "train_time_s": 300.0, **common} for a in ("sac", "tqc", "recurrent_ppo")]
    text = "\n".join(sb._progress(records))
    assert "79 entries left. At the measured costs" in text and "load average at their end 2.5 to 2.5" in text
    assert "Not estimated" not in text


def test_finer_constants_pair_with_the_cell_and_resume(tiny_unet_dir, tmp_path: Path, one_thread) -> None:
    """`finer` evaluates constants on the reference's samples: a = 0 is the baseline (r_1 = 0 exactly), a stored
    constant is not run again, and a constant outside [0, 1] is refused by value."""
    kw = {"n_eval": 3, "model": str(tiny_unet_dir), "stride": 400}
    rec = sb.run_finer("seed", 2, [0.0, 0.5], progress=False, finer_dir=tmp_path, **kw)
    assert set(rec["constants"]) == {"a=0", "a=0.5"} and rec["constants"]["a=0"]["r1"] == [0.0, 0.0, 0.0]
    first = rec["constants"]["a=0.5"]["r1"]
    again = sb.run_finer("seed", 2, [0.5, 1.0], progress=False, finer_dir=tmp_path, **kw)
    assert again["constants"]["a=0.5"]["r1"] == first and set(again["constants"]) == {"a=0", "a=0.5", "a=1"}
    assert "--constants 0 0.5 1" in again["command"]
    with pytest.raises(ValueError, match=r"constants must be in \[0, 1\], got \[1.5\]"):
        sb.run_finer("seed", 2, [1.5], finer_dir=tmp_path, **kw)


def test_heldout_scorer_rows_pair_agents_with_the_best_constant(tmp_path: Path) -> None:
    """The held-out scorer check: per-sample r_1 under the replicate scorer, paired to the best constant (by the
    env's scorer, finer constants included) in the report; rows of another held-out scorer are not compared."""
    from robust_envs.quality import make_evaluator

    rng = np.random.default_rng(0)
    x0 = rng.random((6, 1, 28, 28), dtype=np.float32)
    base = rng.random((6, 1, 28, 28), dtype=np.float32)
    scorer = make_evaluator("levels_heldout")
    assert scorer.name == "levels_heldout"
    expected = (scorer(torch.as_tensor(x0)) - scorer(torch.as_tensor(base))).numpy()
    np.testing.assert_allclose(sb.heldout_r1(x0, base), expected, atol=1e-5)
    assert sb.heldout_r1(x0, x0) == [0.0] * 6
    assert sb.heldout_r1(x0[:, :, :8, :8], base[:, :, :8, :8]) is None  # not the scorer's image size
    with pytest.raises(ValueError, match=r"x0 \(6, 1, 28, 28\) and x0_baseline \(5, 1, 28, 28\)"):
        sb.heldout_r1(x0, base[:5])
    hid = sb.heldout_scorer_id()
    assert hid is not None and hid.startswith("sha256:")
    ref = {"kind": "reference", "threat": "shift", "t_c": 20, "weights": {"model": "m"}, "heldout_scorer": hid,
           "rows": [{"schedule": "a=0.5", "mean_r1": 0.1, "r1": [0.1, 0.1, 0.1], "r1_heldout": [0.2, 0.0, 0.1]},
                    {"schedule": "a=1", "mean_r1": 0.2, "r1": [0.2, 0.1, 0.3], "r1_heldout": [0.1, 0.1, 0.1]}]}  # fmt: skip
    agent = {"kind": "agent", "agent": "ppo_q", "seed": 0, "threat": "shift", "t_c": 20, "heldout_scorer": hid,
             "r1": [0.3, 0.2, 0.5], "r1_heldout": [0.1, 0.2, 0.3]}  # fmt: skip
    other = {**agent, "seed": 1, "heldout_scorer": "sha256:other"}
    lines = sb._heldout_lines(sb._cells([ref, agent, other]), tmp_path)
    text = "\n".join(lines)
    # agent - a=1 per sample: env scorer 0.1, 0.1, 0.2; held-out 0, 0.1, 0.2 (t CIs, 2 degrees of freedom; corr 0.87)
    assert "| a=1 | +0.100 | +0.200 | +0.133 [-0.010, +0.277] | +0.100 [-0.148, +0.348] | +0.87 |" in text
    assert "| ppo_q | 1 |" not in text  # another held-out scorer's rows are not paired
    # a finer constant better by the env's scorer becomes the best constant
    (tmp_path / "shift_tc20.json").write_text(json.dumps({"weights": {"model": "m"}, "constants": {
        "a=0.9": {"mean_r1": 0.25, "r1": [0.25, 0.25, 0.25], "r1_heldout": [0.0, 0.0, 0.0], "heldout_scorer": hid}}}))
    assert "| ppo_q | 0 | a=0.9 | +0.000 | +0.200 |" in "\n".join(sb._heldout_lines(sb._cells([ref, agent]), tmp_path))
    assert sb._heldout_lines(sb._cells([agent]), tmp_path / "none") == []  # no reference: nothing to pair with


@pytest.mark.slow
def test_heldout_backfill_reproduces_r1_and_refuses_a_mismatch(tmp_path: Path, one_thread) -> None:
    """`heldout` adds the held-out scorer's rows to entries made without them: it re-evaluates the stored policy and
    the best constant, checks the env scorer's r_1 is given back, and writes nothing when it is not."""
    args = ["run", "--agents", "ppo", "--t-c", "2", "--threats", "shift", "--seeds", "0", "--stride", "400",
            "--n-eval", "3", "--timesteps", "16", "--results-dir", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip
    sb.main(args)  # embedded model and scorer: 1 x 28 x 28 images, so the held-out rows are filled
    cell = tmp_path / "results" / "shift" / "tc2"
    ppo, ref = json.loads((cell / "ppo_seed0.json").read_text()), json.loads((cell / "reference.json").read_text())
    assert len(ppo["r1_heldout"]) == 3 and ppo["heldout_scorer"] == sb.heldout_scorer_id()
    assert all(len(r["r1_heldout"]) == 3 for r in ref["rows"])
    best = max((r for r in ref["rows"] if r["schedule"].startswith("a=")), key=lambda r: r["mean_r1"])
    made = {"ppo": list(ppo["r1_heldout"]), "best": list(best["r1_heldout"])}
    for rec, path in ((ppo, cell / "ppo_seed0.json"), (ref, cell / "reference.json")):  # as made before the scorer
        rec.pop("heldout_scorer")
        for row in [rec, *rec.get("rows", [])]:
            row.pop("r1_heldout", None)
        path.write_text(json.dumps(rec))
    kw = {"results_dir": tmp_path / "results", "finer_dir": tmp_path / "finer", "checkpoint_dir": tmp_path / "ckpt",
          "progress": False}  # fmt: skip
    lines = sb.backfill_heldout("shift", 2, **kw)
    assert "shift/tc2/ppo_seed0: filled" in lines and any(f"best constant {best['schedule']}: filled" in x for x in lines)
    filled = json.loads((cell / "ppo_seed0.json").read_text())
    np.testing.assert_allclose(filled["r1_heldout"], made["ppo"], atol=1e-5)  # the rows the run itself made
    row = next(r for r in json.loads((cell / "reference.json").read_text())["rows"] if r["schedule"] == best["schedule"])
    np.testing.assert_allclose(row["r1_heldout"], made["best"], atol=1e-5)
    assert row["heldout_scorer"] == sb.heldout_scorer_id()
    assert "already filled" in " ".join(sb.backfill_heldout("shift", 2, **kw))  # nothing to do twice
    filled.pop("heldout_scorer")
    filled["r1"] = [v + 0.5 for v in filled["r1"]]  # a stored r_1 the policy does not give back
    (cell / "ppo_seed0.json").write_text(json.dumps(filled))
    before = (cell / "ppo_seed0.json").read_bytes()
    with pytest.raises(RuntimeError, match=r"shift/tc2/ppo_seed0 \(ppo\): r_1 not reproduced"):
        sb.backfill_heldout("shift", 2, **kw)
    assert (cell / "ppo_seed0.json").read_bytes() == before


def test_report_keeps_stale_entries_out_of_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry made on other weights is never paired with a current one: the report lists it with its old r_1
    and leaves it out of the tables, the verdicts and the finer-grid pairing (a finer file of other weights too).
    The committed shift / t_c 20 entries serve as record templates; which weights count as current is fixed here,
    so the test does not depend on whether those entries match today's model."""
    src = REPO / "benchmarks" / "results" / "sigma" / "shift" / "tc20"
    out = tmp_path / "results" / "shift" / "tc20"
    out.mkdir(parents=True)
    ref = json.loads((src / "reference.json").read_text())
    agent = json.loads((src / "ppo_seed0.json").read_text())
    current = agent["weights"]
    assert ref["weights"] == current
    monkeypatch.setattr(sb, "stale_reason", lambda r: None if r.get("weights") == current else "model weights moved")
    (out / "reference.json").write_text(json.dumps(ref))
    (out / "ppo_seed0.json").write_text(json.dumps(agent))
    old_weights = {**agent["weights"], "model": "sha256:0000000000000000"}
    old = {**agent, "agent": "ppo_q", "name": "shift/tc20/ppo_q_seed0", "weights": old_weights,
           "r1": [v + 1.0 for v in agent["r1"]]}  # fmt: skip
    (out / "ppo_q_seed0.json").write_text(json.dumps(old))
    assert sb.stale_reason(old) is not None
    finer = tmp_path / "sigma_finer"
    finer.mkdir()
    (finer / "shift_tc20.json").write_text(json.dumps({"weights": old_weights, "constants": {
        "a=0.9": {"mean_r1": 0.5, "r1": [0.5] * len(agent["r1"])}}}))  # fmt: skip
    page = sb.build_report(tmp_path / "results", tmp_path / "docs").read_text()
    assert "| 20 | ppo | 1 |" in page and "| 20 | ppo_q |" not in page
    assert f"`shift/tc20/ppo_q_seed0` r_1 {np.mean(old['r1']):+.3f} (model weights moved)" in page
    assert "## Against a finer grid of constants" not in page  # the finer constants were on the old weights
    glance = page.split("## At a glance")[1].split("## Threat")[0]
    assert "| ppo | " in glance and "ppo_q" not in glance  # the summary leaves the stale entry out as well


def test_glance_table_gives_each_agents_verdict_per_cell() -> None:
    glance = {("shift", 60): {"ppo": ("below", -0.064), "ppo_warm_hold": ("matches", 0.0004)},
              ("seed", 20): {"ppo": ("below", -0.038)}, ("shift", 10): {"ppo": ("beats", 0.048, 1)}}  # fmt: skip
    lines = sb._glance_lines(glance)
    assert lines[0] == "## At a glance"
    header = next(line for line in lines if line.startswith("| agent |"))
    assert header == "| agent | `seed` t_c 20 | `shift` t_c 10 | `shift` t_c 60 |"  # threats in THREATS order
    assert "| ppo | below (-0.038) | beats (+0.048; 1 of 3 seeds) | below (-0.064) |" in lines  # fewer seeds: said
    assert "| ppo_warm_hold | - | - | matches (+0.000) |" in lines
    assert "| *agents at or above the best constant* | 0 | 1 | 1 |" in lines
    assert sb._glance_lines({}) == []


def test_share_reading_counts_t_c_where_the_defence_is_above_every_agent() -> None:
    series = {"ppo": [(10, 0.04, 0.03, 0.05), (20, 0.05, -0.03, 0.09)], "ppo_q": [(20, 0.20, 0.1, 0.3)]}
    line = sb._share_reading("shift", {10: 0.26, 20: 0.15, 30: 0.5}, series)
    assert len(line) == 1
    # t_c 30 has no agent: left out; t_c 20 compares with the best agent there (ppo_q 0.20 > 0.15)
    assert "above it at 1 of 2 t_c" in line[0]
    assert "t_c 10: +0.260 vs +0.040; t_c 20: +0.150 vs +0.200" in line[0]
    assert sb._share_reading("shift", {}, series) == []
    assert sb._share_reading("shift", {40: 0.1}, series) == []


def test_verdict_needs_paired_evidence_to_beat() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.1, 0.5, 500)
    best = {"schedule": "a=1", "mean_r1": float(base.mean()), "r1": base.tolist()}
    # seeds whose mean is 0.02 above the constant but with per-sample noise of sd 0.5: paired CIs contain 0
    noisy = [{"r1": (base + 0.02 + rng.normal(0, 0.5, 500)).tolist()} for _ in range(3)]
    assert sb._verdict(noisy, best, lo=best["mean_r1"] + 0.01, hi=best["mean_r1"] + 0.03) == "matches"
    clear = [{"r1": (base + 0.05 + rng.normal(0, 0.05, 500)).tolist()} for _ in range(3)]
    assert sb._verdict(clear, best, lo=best["mean_r1"] + 0.04, hi=best["mean_r1"] + 0.06) == "beats"
    # one seed's paired CI below 0 while the others are above: not `beats`
    assert sb._verdict(clear[:2] + [{"r1": (base - 0.05).tolist()}], best, lo=best["mean_r1"] - 0.05,
                       hi=best["mean_r1"] + 0.06) == "matches"  # fmt: skip
    assert sb._verdict(clear, best, lo=best["mean_r1"] - 0.3, hi=best["mean_r1"] - 0.1) == "beats"  # paired decides
    # playing the constant on all but one sample: the CI over seeds has no width and misses the mean by 1e-5, but no
    # seed's paired CI is below 0, so `matches`; one seed measurably below and the CI below: `below`
    same = [{"r1": base.tolist()}, {"r1": np.r_[base[:-1], base[-1] - 0.005].tolist()}]
    assert sb._verdict(same, best, lo=best["mean_r1"] - 2e-5, hi=best["mean_r1"] - 1e-5) == "matches"
    short = [{"r1": (base - 0.01 + rng.normal(0, 0.01, 500)).tolist()}, same[0]]
    assert sb._verdict(short, best, lo=best["mean_r1"] - 0.02, hi=best["mean_r1"] - 0.001) == "below"
    unpaired = {k: v for k, v in best.items() if k != "r1"}
    assert sb._verdict([{}], unpaired, lo=best["mean_r1"] + 0.01, hi=best["mean_r1"] + 0.03) == "beats"
    assert sb._verdict([{}], unpaired, lo=best["mean_r1"] - 0.3, hi=best["mean_r1"] - 0.1) == "below"
    assert sb._verdict([{}], None, lo=0.0, hi=1.0) == "references pending"


def test_best_constant_includes_a_zero_the_baseline_itself() -> None:
    """The best constant is over seed 000's grid {0, 0.25, ..., 1}: where every measured constant is below 0, it is
    a = 0 (r_1 = 0 on every sample), so an agent is paired against zeros there, not against the least bad a > 0."""
    rows = [{"schedule": "a=0.25", "mean_r1": -0.008, "r1": [-0.01, -0.006], "r1_heldout": [-0.02, 0.0], "heldout_scorer": "h"},
            {"schedule": "a=1", "mean_r1": -0.03, "r1": [-0.03, -0.03]}, {"schedule": "random", "mean_r1": 0.5}]  # fmt: skip
    zero = sb._best_constant(rows)
    assert zero == {"schedule": "a=0", "mean_r1": 0.0, "r1_ci95": [0.0, 0.0], "mean_eta": 0.0, "r1": [0.0, 0.0],
                    "r1_heldout": [0.0, 0.0], "heldout_scorer": "h"}  # fmt: skip
    rows[1].update(mean_r1=0.02)
    assert sb._best_constant(rows) is rows[1]
    assert sb._best_constant([{"schedule": "random", "mean_r1": 0.5}]) is None
    assert sb._paired([{"seed": 0, "r1": [0.03, 0.05]}], zero).startswith("seed 0: +0.040 [")  # the agent's own r_1


def test_compare_agents_pairs_two_agents_on_the_same_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compare``: agent minus other per (threat, t_c, seed) where both ran, on the same samples; a cell only one of
    them ran is left out; an unknown agent is refused with the valid names."""
    def rec(agent: str, seed: int, r1: list[float], t_c: int = 30) -> dict:
        return {"kind": "agent", "agent": agent, "threat": "seed", "t_c": t_c, "seed": seed, "r1": r1,
                "row": {"mean_eta": 1.0 if agent.endswith("edge") else 0.9}}  # fmt: skip

    records = [rec("ppo_warm_hold_edge", 0, [0.5, 0.6, 0.7]), rec("ppo_warm_hold", 0, [0.4, 0.5, 0.7]),
               rec("ppo_warm_hold_edge", 1, [0.5, 0.5, 0.5]), rec("ppo_warm_hold", 0, [0.1, 0.1, 0.1], t_c=40)]  # fmt: skip
    monkeypatch.setattr(sb, "load_sigma_results", lambda results_dir: records)
    monkeypatch.setattr(sb, "stale_reason", lambda record: None)
    lines = sb.compare_agents("ppo_warm_hold_edge", "ppo_warm_hold")
    assert len(lines) == 3 and lines[2].startswith("| `seed` | 30 | 0 | +0.067 [") and lines[2].endswith("| 1.00 | 0.90 | - / - | no |")
    records[1]["r1"], records[1]["warm_start"] = [0.5, 0.6, 0.7], {"init_action": 1.0}  # a rerun that reproduced
    assert sb.compare_agents("ppo_warm_hold_edge", "ppo_warm_hold")[2].endswith("| - / 1 | yes |")
    assert sb.compare_agents("ppo", "ppo_warm_hold")[0].startswith("No (threat, t_c, seed) has current entries of both")
    with pytest.raises(ValueError, match=r"agent must be one of \[.*'ppo'.*\], got 'nope'"):
        sb.compare_agents("nope", "ppo")


def test_iqm_ci_is_reproducible() -> None:
    """A regenerated report gives the same CIs: the bootstrap does not draw from NumPy's global state."""
    np.random.seed(1)
    first = sb._iqm_ci([0.1, 0.2, 0.4])
    np.random.seed(2)
    assert sb._iqm_ci([0.1, 0.2, 0.4]) == first


def test_every_agent_config_is_a_valid_args() -> None:
    """Each benchmark agent's overrides build an :class:`agents.ppo_sigma.Args` (a typo or a bad value fails here,
    not hours into a grid run), and the gamma-1 variants differ from the paper's PPO in gamma (and budget) only."""
    from agents.ppo_sigma import Args

    for name, cfg in sb.AGENTS.items():
        args = Args(**cfg)
        assert args.total_timesteps >= 1, name
    ppo, g1, g1_long = (dataclasses.asdict(Args(**sb.AGENTS[k])) for k in ("ppo", "ppo_gamma1", "ppo_gamma1_long"))
    assert ppo["gamma"] == 0.995 and g1["gamma"] == g1_long["gamma"] == 1.0
    assert {k for k in ppo if ppo[k] != g1[k]} == {"gamma"}
    assert {k for k in ppo if ppo[k] != g1_long[k]} == {"gamma", "total_timesteps"}


def test_added_args_keep_older_fingerprints_and_set_overrides_parse() -> None:
    """An Args field added later (``init_action``) is left out of the fingerprint at its neutral value, so entries
    recorded before it stay valid; any other value is part of it. ``run --set`` parses FIELD=VALUE literals."""
    a = sb.SigmaEntry("ppo", 20, "seed", seed=0)
    assert "init_action" not in a.training_args() and "warm_start" not in a.training_args()
    warm = sb.SigmaEntry("ppo_warm_hold", 60, "shift").training_args()
    assert warm["warm_start"] == 32 and "edge_margin" not in warm  # recorded before edge_margin existed
    assert sb.SigmaEntry("ppo_warm_hold_edge", 60, "shift").training_args() == {**warm, "edge_margin": 1.0}
    assert "edge_margin_side" not in sb.SigmaEntry("ppo_warm_hold_edge", 60, "shift").training_args()
    assert sb.SigmaEntry("ppo_warm_hold_cap", 60, "shift").training_args() == {**warm, "edge_margin": 1.0,
                                                                                "edge_margin_side": "upper"}
    moved = sb.SigmaEntry("ppo", 20, "seed", seed=0, agent_overrides=(("init_action", 1.0),))
    assert moved.training_args()["init_action"] == 1.0 and moved.fingerprint() != a.fingerprint()
    assert sb.SigmaEntry("ppo_init1", 60, "shift").training_args()["init_action"] == 1.0
    assert sb._parse_set(["n_steps=120", "init_action=1.0", "observe=t"]) == (
        ("n_steps", 120), ("init_action", 1.0), ("observe", "t"))
    # a screened entry records its overrides, so the report rebuilds it as it was run (not stale)
    record = {"kind": "agent", "agent": "ppo", "t_c": 20, "threat": "seed", "seed": 0, "n_eval": moved.n_eval,
              "eval_seed": moved.eval_seed, "env_kwargs": moved.env_kwargs(), "train_args": dataclasses.asdict(moved._args()),
              "fingerprint": moved.fingerprint(), "name": moved.name, "weights": moved.weights(),
              "agent_overrides": [["init_action", 1.0]]}  # fmt: skip
    assert sb.stale_reason(record) is None
    unrecorded = {k: v for k, v in record.items() if k != "agent_overrides"}
    assert "init_action: 1.0 -> 0.5" in str(sb.stale_reason(unrecorded))  # without them it is a plain `ppo` entry
    with pytest.raises(ValueError, match="FIELD=VALUE .* got 'warp=9'"):
        sb._parse_set(["warp=9"])
    with pytest.raises(ValueError, match="got 'n_steps'"):
        sb._parse_set(["n_steps"])


def test_warm_start_section_names_each_start_next_to_the_cells_best_constant() -> None:
    """The report's warm-start table: the start an agent picked on its own episodes beside the best constant of the
    evaluation samples; no section without a warm-started entry."""
    ref = {"kind": "reference", "threat": "shift", "t_c": 60,
           "rows": [{"schedule": "a=0.5", "mean_r1": 0.02}, {"schedule": "a=1", "mean_r1": 0.112},
                    {"schedule": "random", "mean_r1": 0.5}]}  # fmt: skip
    warm = {"kind": "agent", "agent": "ppo_warm_hold", "threat": "shift", "t_c": 60, "seed": 1,
            "warm_start": {"episodes_per_constant": 32, "mean_r1": {"0": 0.0, "0.75": 0.05, "1": 0.09}, "init_action": 1.0}}
    lines = sb._warm_start_lines([ref, warm, {"kind": "agent", "agent": "ppo", "threat": "shift", "t_c": 60, "seed": 0}])
    assert lines[1] == "## Warm starts"
    assert lines[-1] == "| `shift` | 60 | ppo_warm_hold | 1 | 32 | 0 +0.000, 0.75 +0.050, 1 +0.090 | a=1 | a=1 (+0.112) |"
    assert sb._warm_start_lines([ref]) == []


def test_constant_pick_risk_resolves_a_clear_gap_and_not_a_tie() -> None:
    """Explore-then-commit on resampled per-sample r_1: a constant far above the rest is always picked; two equal
    ones split the picks while giving up nothing; a = 0 (zeros) joins the candidates."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=500)
    clear = {"a=0.5": 0.1 + 0.1 * noise, "a=1": 1.0 + 0.1 * noise}
    assert sb.constant_pick_risk(clear, 8) == (1.0, 0.0)
    tie = {"a=0.5": 0.5 + rng.normal(size=500), "a=1": 0.5 + rng.normal(size=500)}
    p_best, loss = sb.constant_pick_risk(tie, 8)
    assert 0.2 < p_best < 0.8 and loss < 0.1
    negative = {"a=1": -1.0 + 0.1 * noise}  # every constant below the baseline: a = 0 is the best
    assert sb.constant_pick_risk(negative, 4) == (1.0, 0.0)
    with pytest.raises(ValueError, match="same samples, got lengths"):
        sb.constant_pick_risk({"a=1": np.zeros(3), "a=0.5": np.zeros(4)}, 2)
    with pytest.raises(ValueError, match="n_episodes must be >= 1, got 0"):
        sb.constant_pick_risk(clear, 0)


@pytest.mark.slow
def test_safe_agent_reuses_its_twins_learner_and_an_identical_evaluation(tiny_unet_dir: Path, tmp_path: Path,
                                                                          one_thread) -> None:  # fmt: skip
    """``ppo_warm_hold_cap_safe`` trains as ``ppo_warm_hold_cap``: with that entry current, it copies its learner,
    runs only the safe-improvement test, and takes the stored evaluation of the policy it deploys (the twin's, or
    the cell's reference row of the constant), which a fresh evaluation reproduces."""
    from agents.evaluate_sigma import evaluate_policy
    from agents.ppo_sigma import load_deployed

    common = ["--t-c", "2", "--threats", "seed", "--seeds", "0", *_args(tiny_unet_dir, tmp_path), "--set",
              "warm_start=1", "n_steps=2", "batch_size=8"]  # fmt: skip
    sb.main(["run", "--agents", "ppo_warm_hold_cap", *common])
    out, ckpt = tmp_path / "results" / "seed" / "tc2", tmp_path / "ckpt" / "seed" / "tc2"
    twin = json.loads((out / "ppo_warm_hold_cap_seed0.json").read_text())
    assert twin["safe_improvement"] is None and twin["training_reused_from"] is None
    sb.main(["run", "--agents", "ppo_warm_hold_cap_safe", "--no-references", *common, "safe_improvement=4"])
    safe = json.loads((out / "ppo_warm_hold_cap_safe_seed0.json").read_text())
    assert safe["training_reused_from"] == "seed/tc2/ppo_warm_hold_cap_seed0"
    assert (ckpt / "ppo_warm_hold_cap_safe_seed0" / "policy.zip").read_bytes() == \
        (ckpt / "ppo_warm_hold_cap_seed0" / "policy.zip").read_bytes()  # fmt: skip
    test = safe["safe_improvement"]
    assert test["episodes"] == 4 and test["constant_action"] == twin["warm_start"]["init_action"]
    assert test["deployed"] == ("learner" if test["lower_bound_95"] > 0 else "constant")
    if test["deployed"] == "learner":
        assert safe["evaluation_reused_from"] == twin["name"] and safe["r1"] == twin["r1"]
    elif test["constant_action"] > 0:
        ref = {r["schedule"]: r for r in json.loads((out / "reference.json").read_text())["rows"]}
        assert safe["evaluation_reused_from"] == "seed/tc2/reference"
        assert safe["r1"] == ref[f"a={test['constant_action']:g}"]["r1"]
    assert safe["row"]["schedule"] == "ppo_warm_hold_cap_safe"
    entry = sb._current_entry(safe)
    entry = dataclasses.replace(entry, results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "ckpt"))
    fresh = evaluate_policy("check", load_deployed(entry.checkpoint_path()), entry.env_kwargs(), entry.n_eval, 250,
                            entry.eval_seed, progress=False)  # fmt: skip
    np.testing.assert_allclose(fresh.r1, safe["r1"], atol=1e-6)  # the reused evaluation is this policy's
    # the learner branch: where the test deploys the learner, the twin's evaluation is taken, and it is the learner's
    row, evaluation = entry._evaluation_of_the_same_policy({"deployed": "learner"},
                                                           {"training_reused_from": twin["name"]})  # fmt: skip
    assert evaluation["evaluation_reused_from"] == twin["name"] and evaluation["r1"] == twin["r1"]
    assert row["schedule"] == "ppo_warm_hold_cap_safe" and row["mean_r1"] == twin["row"]["mean_r1"]
    learner = evaluate_policy("check", load_deployed(ckpt / "ppo_warm_hold_cap_seed0"), entry.env_kwargs(),
                              entry.n_eval, 250, entry.eval_seed, progress=False)  # fmt: skip
    np.testing.assert_allclose(learner.r1, twin["r1"], atol=1e-6)
    assert entry._evaluation_of_the_same_policy({"deployed": "learner"}, {}) is None  # trained itself: evaluated
    before = (out / "ppo_warm_hold_cap_safe_seed0.json").read_bytes()
    sb.main(["run", "--agents", "ppo_warm_hold_cap_safe", "--no-references", *common, "safe_improvement=4"])
    assert (out / "ppo_warm_hold_cap_safe_seed0.json").read_bytes() == before  # done: not rerun
    text = sb.build_report(tmp_path / "results", tmp_path / "docs").read_text()
    deployed = "learner" if test["deployed"] == "learner" else f"a={test['constant_action']:g}"
    assert "## Safe policy improvement" in text
    assert (f"| `seed` | 2 | ppo_warm_hold_cap_safe | 0 | 4 | {test['mean_gain']:+.4f} [{test['lower_bound_95']:+.4f}] | "
            f"{deployed} | {safe['row']['mean_r1']:+.3f} / {twin['row']['mean_r1']:+.3f} |") in text
    assert f"Deployed: ppo_warm_hold_cap_safe, seed: {test['deployed']} 1." in text
    # a twin whose train.json is corrupt is not reused: the entry trains its own learner
    (ckpt / "ppo_warm_hold_cap_seed0" / "train.json").write_text('{"train_time_s": ')
    (out / "ppo_warm_hold_cap_safe_seed0.json").unlink()
    shutil.rmtree(ckpt / "ppo_warm_hold_cap_safe_seed0")
    sb.main(["run", "--agents", "ppo_warm_hold_cap_safe", "--no-references", *common, "safe_improvement=4"])
    again = json.loads((out / "ppo_warm_hold_cap_safe_seed0.json").read_text())
    assert again["training_reused_from"] is None and again["safe_improvement"]["episodes"] == 4
