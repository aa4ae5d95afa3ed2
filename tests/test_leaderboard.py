from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from benchmarks import leaderboard
from benchmarks.evaluate import EvalConfig, eval_subset, evaluate
from benchmarks.trainers import (
    TRAINERS,
    PGDATTrainer,
    PolicyLossTrainer,
    TRADESConfig,
    TrainConfig,
    Trainer,
    get_trainer,
)
from robust_envs.attacks import protocol_suite
from robust_envs.data import DatasetNotFoundError, find_fashion_mnist, load_dataset

REPO = Path(__file__).resolve().parent.parent
REQUIRED_FIELDS = {
    "method", "paper", "dataset", "architecture", "threat_models", "attacks", "clean_acc", "attack_acc",
    "autoattack_acc", "robust_acc", "union_acc", "average_acc", "norm_acc", "train_time_s", "hardware", "seed",
    "epochs", "n_eval", "library_versions", "git", "masking", "fingerprint",
}  # fmt: skip
QUICK = ["--datasets", "digits", "--n-eval", "40", "--no-autoattack", "--square-queries", "30",
         "--train-override", "epochs=1"]  # fmt: skip


def _dirs(tmp: Path) -> list[str]:
    return [
        "--results-dir",
        str(tmp / "results"),
        "--checkpoint-dir",
        str(tmp / "ckpt"),
        "--docs-dir",
        str(tmp / "docs"),
    ]


def test_registry_and_configs() -> None:
    assert {"standard", "pgd_at", "trades", "policy_loss"} <= set(TRAINERS)
    cfg = get_trainer("trades").default_config("fashion_mnist")
    assert isinstance(cfg, TRADESConfig) and cfg.beta == 6.0 and cfg.eps_linf == 0.1 and cfg.architecture == "lenet5"
    c10 = PGDATTrainer.default_config("cifar10")
    assert c10.architecture == "wrn28_10" and c10.eps_linf == pytest.approx(8 / 255) and c10.epochs == 100
    with pytest.raises(ValueError, match="no field"):
        PGDATTrainer.default_config("digits", bogus=1)
    with pytest.raises(ValueError, match="valid"):
        get_trainer("dverge_not_yet")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_runner_smoke_tables_and_skip(tmp_path: Path) -> None:
    args = ["run", "--methods", "standard", "pgd_at", "trades", "--seeds", "0", *QUICK, *_dirs(tmp_path)]
    assert leaderboard.main(args) == 0
    files = sorted((tmp_path / "results" / "digits").glob("*.json"))
    assert [f.name for f in files] == ["pgd_at_seed0.json", "standard_seed0.json", "trades_seed0.json"]
    records = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in files}
    for rec in records.values():
        assert REQUIRED_FIELDS <= set(rec)
        assert 0.0 <= rec["robust_acc"] <= rec["clean_acc"] <= 1.0
        assert rec["threat_models"]["Linf"] == 0.1 and rec["attacks"]["pgd_l2"]["norm"] == "L2"
    # adversarial training must beat standard training on A_rob even with a one-epoch budget
    assert records["pgd_at"]["robust_acc"] > records["standard"]["robust_acc"]
    md = (tmp_path / "docs" / "leaderboard.md").read_text()
    assert "| pgd_at |" in md and "A_rob" in md and "Protocol check" in md
    assert (tmp_path / "docs" / "leaderboard.csv").read_text().startswith("dataset,method")
    assert (tmp_path / "docs" / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    before = {f: f.read_bytes() for f in files}
    assert leaderboard.main(args) == 0  # everything done: nothing rerun, nothing rewritten
    assert {f: f.read_bytes() for f in files} == before


def test_resume_after_kill_loses_no_finished_entry(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.leaderboard", "run", "--methods", "standard",
           "--seeds", "0", "1", "2", "3", *QUICK, *_dirs(tmp_path), "--no-tables"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "run.log"
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    out = tmp_path / "results" / "digits"
    deadline = time.monotonic() + 600
    while not list(out.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    exited = proc.poll()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert exited is None, f"the run ended before it could be killed (rc {exited}): {log.read_text()[-2000:]}"
    finished = {f.name: f.read_bytes() for f in out.glob("*.json")}
    assert 1 <= len(finished) < 4, f"kill should land mid-run, found {sorted(finished)}"
    for blob in finished.values():
        json.loads(blob)  # complete files only: writes are atomic
    # run again (in-process): finishes the rest, leaves finished entries untouched
    assert (
        leaderboard.main(["run", "--methods", "standard", "--seeds", "0", "1", "2", "3", *QUICK, *_dirs(tmp_path)]) == 0
    )
    names = sorted(f.name for f in out.glob("*.json"))
    assert names == [f"standard_seed{s}.json" for s in range(4)]
    for name, blob in finished.items():
        assert (out / name).read_bytes() == blob


@dataclass
class _NoiseConfig(TrainConfig):
    """Config of a toy method used to show that a new method plugs in without touching the runner."""

    sigma: float = 0.1


class _GaussianAugmentTrainer(Trainer):
    name: ClassVar[str] = "gauss_aug"
    paper: ClassVar[str] = "test-only Gaussian data augmentation"
    config_cls: ClassVar[type[TrainConfig]] = _NoiseConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"digits": {"sigma": 0.2}}

    def loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noisy = (images + self.config.sigma * torch.randn_like(images)).clamp(0, 1)  # type: ignore[attr-defined]
        return F.cross_entropy(model(noisy), labels)


def test_policy_loss_trainer_runs_through_the_runner(tmp_path: Path) -> None:
    # seed 003's trainer learns through ClassifierReward-v0; the runner evaluates it like any other method
    assert leaderboard.main(["run", "--methods", "policy_loss", "--seeds", "0", *QUICK, *_dirs(tmp_path)]) == 0
    rec = json.loads((tmp_path / "results" / "digits" / "policy_loss_seed0.json").read_text())
    assert REQUIRED_FIELDS <= set(rec) and rec["train_config"]["mode"] == "eq12_eq4"
    assert 0.0 <= rec["robust_acc"] <= rec["clean_acc"] <= 1.0  # learning itself: tests/test_policy_loss.py
    assert (tmp_path / "ckpt" / "digits" / "policy_loss_seed0.pt").is_file()
    with pytest.raises(ValueError, match="train split"):
        PolicyLossTrainer(PolicyLossTrainer.default_config("digits")).train(load_dataset("digits", "test"))


def test_new_method_plugs_in_via_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRAINERS, _GaussianAugmentTrainer.name, _GaussianAugmentTrainer)
    assert leaderboard.main(["run", "--methods", "gauss_aug", "--seeds", "0", *QUICK, *_dirs(tmp_path)]) == 0
    rec = json.loads((tmp_path / "results" / "digits" / "gauss_aug_seed0.json").read_text())
    assert rec["train_config"]["sigma"] == 0.2 and rec["paper"] == _GaussianAugmentTrainer.paper


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.json"
    leaderboard.atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        leaderboard.atomic_write_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def _have_fashion_mnist() -> bool:
    try:
        find_fashion_mnist()
    except DatasetNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not on disk (make data)")
@pytest.mark.parametrize("method", ["standard", "pgd_at", "adt_exp", "dverge"])
def test_committed_result_recomputes(method: str) -> None:
    """RobustBench-style: reload a committed checkpoint and recompute clean, FGSM and PGD-20 accuracy."""
    path = REPO / "benchmarks" / "results" / "fashion_mnist" / f"{method}_seed0.json"
    if not path.is_file():
        pytest.skip(f"no committed result {path.name}")
    rec = json.loads(path.read_text())
    blob = torch.load(REPO / rec["checkpoint"]["path"], map_location="cpu", weights_only=False)
    test = load_dataset("fashion_mnist", "test")
    trainer = get_trainer(method)
    model = trainer(trainer.default_config("fashion_mnist", **rec["train_config"])).build_model(test)
    model.load_state_dict(blob["state_dict"])
    sub = eval_subset(test, rec["n_eval"], rec["subset_seed"])
    suite = [s for s in protocol_suite("fashion_mnist", autoattack=False) if s.key in ("fgsm", "pgd20")]
    res = evaluate(model.eval(), sub, "fashion_mnist", EvalConfig(n_eval=rec["n_eval"]), suite=suite)
    assert res.metrics.clean_acc == pytest.approx(rec["clean_acc"], abs=0.002)
    assert res.metrics.attack_acc["fgsm"] == pytest.approx(rec["attack_acc"]["fgsm"], abs=0.005)
    assert res.metrics.attack_acc["pgd20"] == pytest.approx(rec["attack_acc"]["pgd20"], abs=0.02)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ROBUST_ENVS_TEST_RAY") != "1",
    reason="starting Ray takes about a minute on 2 cores: set ROBUST_ENVS_TEST_RAY=1 (needs the ray extra)",
)
def test_ray_engine_runs_an_entry(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    try:
        args = [
            "run",
            "--engine",
            "ray",
            "--methods",
            "standard",
            "--seeds",
            "0",
            *QUICK,
            *_dirs(tmp_path),
            "--no-tables",
        ]
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
        assert leaderboard.main(args) == 0
    finally:
        ray.shutdown()
    rec = json.loads((tmp_path / "results" / "digits" / "standard_seed0.json").read_text())
    assert rec["method"] == "standard" and 0.0 < rec["clean_acc"] <= 1.0


def test_tables_skip_a_truncated_result_and_name_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A new user's first fault: one truncated JSON under results/ must not stop `tables` with a bare
    JSONDecodeError; the other entries are tabulated and the warning names the file and the command that redoes it."""
    src = REPO / "benchmarks" / "results" / "fashion_mnist"
    dst = tmp_path / "results" / "fashion_mnist"
    dst.mkdir(parents=True)
    for name in ("standard_seed0.json", "pgd_at_seed0.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    blob = (src / "trades_seed0.json").read_bytes()
    (dst / "trades_seed0.json").write_bytes(blob[: len(blob) // 3])
    caplog.set_level("WARNING", logger="benchmarks.leaderboard")
    assert (
        leaderboard.main(["tables", "--results-dir", str(tmp_path / "results"), "--docs-dir", str(tmp_path / "d")]) == 0
    )
    md = (tmp_path / "d" / "leaderboard.md").read_text()
    assert "| standard |" in md and "| pgd_at |" in md and "| trades |" not in md
    warning = caplog.text
    assert "trades_seed0.json: invalid or truncated JSON" in warning
    assert "python -m benchmarks.leaderboard run --methods trades --datasets fashion_mnist --seeds 0" in warning


@pytest.mark.slow
def test_run_redoes_a_corrupt_result_and_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["run", "--methods", "standard", "--seeds", "0", *QUICK, *_dirs(tmp_path), "--no-tables"]
    assert leaderboard.main(args) == 0
    result = tmp_path / "results" / "digits" / "standard_seed0.json"
    ckpt = tmp_path / "ckpt" / "digits" / "standard_seed0.pt"
    for path in (result, ckpt):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    caplog.set_level("WARNING", logger="benchmarks.leaderboard")
    assert leaderboard.main(args) == 0
    assert json.loads(result.read_text())["method"] == "standard"  # redone, complete
    assert torch.load(ckpt, weights_only=False)["state_dict"]  # retrained, complete
    assert (
        "standard_seed0.json: invalid or truncated JSON" in caplog.text and "this run redoes the entry" in caplog.text
    )
    assert "standard_seed0.pt: not a readable torch checkpoint" in caplog.text and "retraining" in caplog.text


def test_other_result_readers_skip_a_truncated_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from benchmarks import policy_loss_study, report_dverge_mngac

    src = REPO / "benchmarks" / "results"
    (tmp_path / "fashion_mnist").mkdir()
    (tmp_path / "policy_loss").mkdir()
    good = sorted((src / "policy_loss").glob("*.json"))[0]
    (tmp_path / "policy_loss" / good.name).write_bytes(good.read_bytes())
    (tmp_path / "policy_loss" / "broken.json").write_text('{"method": "ce", "se')
    (tmp_path / "fashion_mnist" / "dverge_seed0.json").write_bytes(
        (src / "fashion_mnist" / "dverge_seed0.json").read_bytes()
    )
    (tmp_path / "fashion_mnist" / "dverge_seed1.json").write_text("")
    caplog.set_level("WARNING", logger="benchmarks.leaderboard")
    assert len(policy_loss_study.load_results(tmp_path / "policy_loss")) == 1
    assert [r["seed"] for r in report_dverge_mngac.load(tmp_path, "fashion_mnist")["dverge"]] == [0]
    assert "broken.json: invalid or truncated JSON" in caplog.text and "policy_loss_study" in caplog.text
    assert "dverge_seed1.json: empty file" in caplog.text and "--methods dverge" in caplog.text
