"""Leaderboard runner: methods x data sets x seeds -> one JSON per entry -> tables and a plot in docs/.

Usage::

    python -m benchmarks.leaderboard run --methods standard pgd_at trades --datasets fashion_mnist --seeds 0 1 2
    python -m benchmarks.leaderboard tables          # regenerate docs/leaderboard.{md,csv,png} from the JSONs
    python -m benchmarks.leaderboard reevaluate      # re-evaluate entries of an older protocol from their checkpoints

Each entry trains the method (or reuses a finished checkpoint with the same training config), evaluates it
with :mod:`benchmarks.evaluate`, and writes ``<results>/<dataset>/<method>_seed<seed>.json`` atomically
(temporary file + ``os.replace``). A run that is interrupted and started again skips every entry whose
JSON already exists with the same fingerprint (training config + protocol), so no finished entry is lost.
Entries run locally in order (``--engine local``, default; ``--workers N`` for N local processes) or as
Ray tasks (``--engine ray``; install the ``ray`` extra; ``--ray-address`` joins an existing cluster).

Protocol versions: every entry records ``protocol_version`` (absent: 1), the version of
:func:`robust_envs.attacks.protocol_suite` its numbers come from. The tables keep entries of different versions
in separate rows and say which version each row's L2 / L1 columns come from. ``reevaluate`` brings stale entries
to :data:`robust_envs.attacks.PROTOCOL_VERSION`: one entry at a time, evaluation only (the checkpoint must exist
and match the entry's training config and sha256; nothing is retrained), each JSON replaced atomically, so an
interrupted run resumes with the next stale entry; entries already current are not touched.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.evaluate import EvalConfig, EvalResult, eval_subset, evaluate
from benchmarks.trainers import TRAINERS, get_trainer
from robust_envs.attacks import PROTOCOL_NORMS, PROTOCOL_VERSION, radii_for
from robust_envs.data import load_dataset
from robust_envs.fileio import CorruptFileError, read_json, read_torch

__all__ = [
    "EntrySpec",
    "atomic_write_bytes",
    "atomic_write_json",
    "build_tables",
    "crosscheck_state",
    "crosscheck_summary",
    "load_results",
    "main",
    "read_json_or_warn",
    "protocol_label",
    "protocol_version",
    "redo_command",
    "reevaluate",
    "reevaluate_entry",
    "run_entry",
    "run_leaderboard",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
#: Table columns: (JSON path, header). Accuracies are in percent in the tables.
COLUMNS: list[tuple[str, str]] = [
    ("clean_acc", "Clean"),
    ("attack_acc.fgsm", "FGSM"),
    ("attack_acc.pgd20", "PGD-20"),
    ("attack_acc.pgd100", "PGD-100"),
    ("attack_acc.mim20", "MIM-20"),
    ("attack_acc.cw30", "C&W"),
    ("attack_acc.square", "Square"),
    ("autoattack_acc", "AutoAttack"),
    ("robust_acc", "A_rob"),
    ("norm_acc.L2", "L2"),
    ("norm_acc.L1", "L1"),
    ("union_acc", "Union"),
    ("average_acc", "Avg"),
]


# ----------------------------------------------------------------------------------------------- atomic I/O
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


# ----------------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class EntrySpec:
    """One leaderboard entry to produce.

    Attributes:
        method: key of :data:`benchmarks.trainers.TRAINERS`.
        dataset: data set name.
        seed: training seed.
        results_dir: root of the result JSONs.
        checkpoint_dir: root of the model checkpoints.
        train_overrides: fields overriding the method's config (e.g. ``{"epochs": 1}``).
        eval_config: :class:`EvalConfig` as a dict.
        threads: torch intra-op threads for this entry (1 avoids oversubscription on shared CPUs).
    """

    method: str
    dataset: str
    seed: int
    results_dir: str
    checkpoint_dir: str
    train_overrides: tuple[tuple[str, Any], ...] = ()
    eval_config: tuple[tuple[str, Any], ...] = ()
    threads: int = 1

    @property
    def name(self) -> str:
        """``<dataset>/<method>_seed<seed>``."""
        return f"{self.dataset}/{self.method}_seed{self.seed}"

    def result_path(self) -> Path:
        """Where the entry's JSON goes."""
        return Path(self.results_dir) / self.dataset / f"{self.method}_seed{self.seed}.json"

    def checkpoint_path(self) -> Path:
        """Where the trained model's checkpoint goes."""
        return Path(self.checkpoint_dir) / self.dataset / f"{self.method}_seed{self.seed}.pt"

    def train_config(self) -> Any:
        """The method's config on this data set with the overrides applied."""
        return get_trainer(self.method).default_config(self.dataset, **dict(self.train_overrides))

    def eval_cfg(self) -> EvalConfig:
        """The :class:`EvalConfig` of this entry."""
        return EvalConfig(**dict(self.eval_config))

    def train_fingerprint(self) -> str:
        """Hash of what determines the trained model (method, data set, seed, training config)."""
        payload = {"method": self.method, "dataset": self.dataset, "seed": self.seed,
                   "config": self.train_config().to_dict()}  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Hash of everything that determines the entry: training config and protocol settings."""
        payload = {"train": self.train_fingerprint(), "eval": dataclasses.asdict(self.eval_cfg()),
                   "radii": dataclasses.asdict(radii_for(self.dataset)), "schema": SCHEMA_VERSION}  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        """True when a result JSON with this entry's fingerprint exists."""
        path = self.result_path()
        if not path.is_file():
            return False
        try:
            record = read_json(path, hint="this run redoes the entry")
        except (OSError, CorruptFileError) as err:
            logger.warning("%s", err)
            return False
        return isinstance(record, dict) and record.get("fingerprint") == self.fingerprint()


def _git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


#: The checkout's commit when this module was imported: the code that runs, even if HEAD moves during a run.
_GIT_AT_IMPORT: dict[str, Any] | None = None


def _git_at_import() -> dict[str, Any]:
    global _GIT_AT_IMPORT
    if _GIT_AT_IMPORT is None:
        _GIT_AT_IMPORT = _git_commit()
    return _GIT_AT_IMPORT


def _versions() -> dict[str, str]:
    import matplotlib
    import torchattacks
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torchattacks": torchattacks.__version__, "numpy": np.__version__,
            "matplotlib": matplotlib.__version__}  # fmt: skip


def _hardware(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"device": "cpu", "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "platform": platform.platform()}  # fmt: skip


@dataclass(frozen=True)
class _Trained:
    model: torch.nn.Module
    train_time_s: float
    train_cpu_s: float | None
    reused: bool


def _train_or_load(spec: EntrySpec, device: torch.device) -> _Trained:
    """The trained model, its wall-clock and CPU training time, and whether it came from a checkpoint."""
    trainer_cls = get_trainer(spec.method)
    config = spec.train_config()
    train = load_dataset(spec.dataset, "train")
    ckpt = spec.checkpoint_path()
    if ckpt.is_file():
        try:
            blob = read_torch(ckpt, hint="retraining this entry", map_location=device, weights_only=False)
            if not isinstance(blob, dict):
                raise CorruptFileError(ckpt, f"expected a dict checkpoint, got {type(blob).__name__}", "retraining")
        except CorruptFileError as err:
            logger.warning("%s", err)
            blob = {}
        if blob and blob.get("train_fingerprint") == spec.train_fingerprint():
            model = trainer_cls(config).build_model(train)
            try:
                model.load_state_dict(blob["state_dict"])
                cpu = blob.get("train_cpu_s")
                return _Trained(model.to(device).eval(), float(blob["train_time_s"]), cpu, True)
            except (KeyError, RuntimeError, TypeError, ValueError) as err:
                logger.warning("checkpoint %s does not restore the model (%s: %s); retraining", ckpt,
                               err.__class__.__name__, str(err).splitlines()[0] if str(err) else "")  # fmt: skip
        elif blob:
            logger.warning("checkpoint %s has another training config; retraining", ckpt)
    t0, c0 = time.perf_counter(), time.process_time()
    model = trainer_cls(config).train(train, seed=spec.seed, device=device)
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "train_fingerprint": spec.train_fingerprint(),
                "train_time_s": train_time, "train_cpu_s": train_cpu, "method": spec.method, "dataset": spec.dataset, "seed": spec.seed,
                "config": config.to_dict()}, buf)  # fmt: skip
    atomic_write_bytes(ckpt, buf.getvalue())
    return _Trained(model, train_time, train_cpu, False)


def run_entry(spec: EntrySpec) -> dict[str, Any]:
    """Train (or reuse) and evaluate one entry, write its JSON atomically, and return the record.

    Raises:
        ValueError: on an unknown method or data set (from the registries).
        robust_envs.data.DatasetNotFoundError: when the data set is not on disk.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _run_entry(spec)
    finally:
        torch.set_num_threads(previous_threads)


def _evaluation_fields(spec: EntrySpec, model: torch.nn.Module, cfg: EvalConfig) -> tuple[dict[str, Any], EvalResult]:
    """Evaluate ``model`` under ``cfg`` and return the entry fields that come from the evaluation."""
    test = load_dataset(spec.dataset, "test")
    subset = eval_subset(test, cfg.n_eval, cfg.subset_seed)
    t0, c0 = time.perf_counter(), time.process_time()
    result = evaluate(model, subset, spec.dataset, cfg, n_classes=test.num_classes)
    eval_time, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
    radii = radii_for(spec.dataset)
    fields: dict[str, Any] = {
        "protocol_version": cfg.protocol_version,
        "threat_models": {"Linf": radii.eps_linf, "L2": radii.eps_l2, "L1": radii.eps_l1, "source": radii.source},
        **result.summary(),
        "subset_seed": cfg.subset_seed,
        "eval_config": dataclasses.asdict(cfg),
        "eval_time_s": eval_time,
        "eval_cpu_s": eval_cpu,
        "hardware": _hardware(spec.threads),
        "library_versions": _versions(),
        "git": _git_at_import(),
    }
    return fields, result


def _run_entry(spec: EntrySpec) -> dict[str, Any]:
    device = torch.device("cpu")
    trained = _train_or_load(spec, device)
    cfg = spec.eval_cfg()
    fields, _ = _evaluation_fields(spec, trained.model, cfg)
    trainer_cls = get_trainer(spec.method)
    config = spec.train_config()
    test = load_dataset(spec.dataset, "test")
    subset = eval_subset(test, cfg.n_eval, cfg.subset_seed)
    t1 = time.perf_counter()
    extra = trainer_cls(config).extra_metrics(trained.model, subset, spec.dataset, cfg)
    extra_time = time.perf_counter() - t1
    ckpt = spec.checkpoint_path()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": spec.fingerprint(),
        "method": spec.method,
        "paper": trainer_cls.paper,
        "dataset": spec.dataset,
        "architecture": config.architecture,
        "seed": spec.seed,
        "epochs": config.epochs,
        "train_config": config.to_dict(),
        **fields,
        "train_time_s": trained.train_time_s,
        "train_cpu_s": trained.train_cpu_s,
        "extra": extra,
        "extra_time_s": extra_time,
        "checkpoint_reused": trained.reused,
        "checkpoint": {
            "path": os.path.relpath(ckpt, REPO_ROOT) if ckpt.is_absolute() else str(ckpt),
            "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        },  # fmt: skip
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(spec.result_path(), record)
    return record


# ----------------------------------------------------------------------------------------------- re-evaluation
def protocol_version(record: dict[str, Any]) -> int:
    """The protocol version an entry's numbers come from (entries written before versioning: 1)."""
    return int(record.get("protocol_version", 1))


def protocol_label(version: int) -> str:
    """Short table label: ``"v2"``, or ``"v1 (re-evaluation pending)"`` for an older version."""
    return f"v{version}" if version >= PROTOCOL_VERSION else f"v{version} (re-evaluation pending)"


#: Fields an older record keeps under ``reevaluated.previous`` when it is re-evaluated (the numbers it replaced).
_PREVIOUS_FIELDS = ("protocol_version", "clean_acc", "attack_acc", "robust_acc", "autoattack_acc", "norm_acc",
                    "union_acc", "average_acc", "n_combined", "masking", "crosscheck", "eval_time_s", "eval_cpu_s",
                    "hardware", "library_versions", "git", "created")  # fmt: skip


def _spec_of(record: dict[str, Any], results_dir: Path, checkpoint_dir: Path, threads: int) -> EntrySpec:
    """The :class:`EntrySpec` that reproduces ``record`` under the current protocol version."""
    eval_cfg = {**record["eval_config"], "protocol_version": PROTOCOL_VERSION}
    return EntrySpec(
        method=record["method"], dataset=record["dataset"], seed=int(record["seed"]), results_dir=str(results_dir),
        checkpoint_dir=str(checkpoint_dir),
        train_overrides=tuple(sorted((k, v) for k, v in record["train_config"].items() if k != "dataset")),
        eval_config=tuple(sorted(eval_cfg.items())), threads=threads,
    )  # fmt: skip


def _load_checkpoint(spec: EntrySpec, record: dict[str, Any]) -> torch.nn.Module:
    """The entry's trained model, restored from its checkpoint; never retrains.

    Raises:
        FileNotFoundError: when the checkpoint is missing.
        ValueError: when its sha256 differs from the entry's, or it was trained with another config.
    """
    ckpt = spec.checkpoint_path()
    if not ckpt.is_file():
        raise FileNotFoundError(f"{spec.name}: checkpoint {ckpt} missing; re-evaluation needs it (it never retrains)")
    want = record.get("checkpoint", {}).get("sha256")
    got = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    if want is not None and want != got:
        raise ValueError(f"{spec.name}: checkpoint {ckpt} has sha256 {got[:12]}..., the entry names {want[:12]}...")
    blob = read_torch(ckpt, hint="restore it from git", map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("train_fingerprint") != spec.train_fingerprint():
        raise ValueError(f"{spec.name}: checkpoint {ckpt} was trained with another config than the entry records")
    train = load_dataset(spec.dataset, "train")
    model = get_trainer(spec.method)(spec.train_config()).build_model(train)
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def reevaluate_entry(path: Path, checkpoint_dir: Path, threads: int = 1) -> dict[str, Any] | None:
    """Re-evaluate the entry at ``path`` under the current protocol if it is stale; write it atomically.

    Training fields (config, times, checkpoint) and ``extra`` are kept; every evaluation field is replaced; the
    replaced numbers are kept under ``reevaluated.previous``. Returns the new record, or None when the entry is
    already current (then the file is not touched).

    Raises:
        FileNotFoundError, ValueError: from :func:`_load_checkpoint`.
    """
    record = read_json(path, hint="redo the entry with `python -m benchmarks.leaderboard run`")
    if protocol_version(record) >= PROTOCOL_VERSION:
        return None
    spec = _spec_of(record, path.parent.parent, checkpoint_dir, threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _load_checkpoint(spec, record)
        fields, _ = _evaluation_fields(spec, model, spec.eval_cfg())
    finally:
        torch.set_num_threads(previous_threads)
    previous = {k: record[k] for k in _PREVIOUS_FIELDS if k in record}
    previous["protocol_version"] = protocol_version(record)
    new = {k: v for k, v in record.items() if k not in ("crosscheck", "per_point")}
    new.update(fields)
    new["fingerprint"] = spec.fingerprint()
    new["reevaluated"] = {
        "from_protocol": protocol_version(record),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.leaderboard reevaluate",
        "note": "evaluation only, from the committed checkpoint; training fields and extra kept",
        "previous": previous,
        # every earlier replacement, oldest first (the last one is ``previous``)
        "history": [*record.get("reevaluated", {}).get("history", []), previous],
    }
    atomic_write_json(path, new)
    return new


def reevaluate(
    results_dir: Path,
    checkpoint_dir: Path,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
    order: str = "name",
    threads: int = 1,
) -> list[str]:
    """Re-evaluate the stale entries under ``results_dir`` (see :func:`reevaluate_entry`), one at a time.

    Args:
        methods, seeds, datasets: only entries matching these (None: all).
        limit: at most this many entries in this call (None: all); the rest stay stale for a later call.
        order: ``"name"`` or ``"cost"`` (cheapest first, by the entry's recorded ``eval_cpu_s`` / ``eval_time_s``).
        threads: torch threads.

    Returns:
        ``<dataset>/<file name>`` of the entries re-evaluated now.
    """
    if order not in ("name", "cost"):
        raise ValueError(f"order must be 'name' or 'cost', got {order!r}")
    stale: list[tuple[float, Path]] = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        rec = read_json_or_warn(path, redo_command(path))
        if not isinstance(rec, dict) or not {"method", "dataset", "seed", "robust_acc", "eval_config"} <= set(rec):
            continue
        if protocol_version(rec) >= PROTOCOL_VERSION:
            continue
        if (
            (methods and rec["method"] not in methods)
            or (seeds and int(rec["seed"]) not in seeds)
            or (datasets and rec["dataset"] not in datasets)
        ):
            continue
        cost = rec.get("eval_cpu_s") or rec.get("eval_time_s") or 0.0
        stale.append((float(cost), path))
    if order == "cost":
        stale.sort(key=lambda t: t[0])
    done: list[str] = []
    for _, path in stale[:limit]:
        t0 = time.perf_counter()
        if reevaluate_entry(path, checkpoint_dir, threads) is not None:
            done.append(f"{path.parent.name}/{path.name}")
            logger.warning("re-evaluated %s in %.0f s", path, time.perf_counter() - t0)
    return done


def _run_spec(spec: Any) -> Any:
    """Run one entry: a leaderboard :class:`EntrySpec`, or any spec with ``name``, ``is_done()`` and ``run()``
    (e.g. :class:`benchmarks.sigma_benchmark.SigmaEntry`): the runner's guarantees hold for both.
    """
    return spec.run() if hasattr(spec, "run") else run_entry(spec)


def _run_entry_ray(spec: Any) -> Any:
    return _run_spec(spec)


def run_leaderboard(
    specs: Sequence[Any],
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    desc: str = "leaderboard",
) -> list[str]:
    """Run every entry not yet done; return the names of the entries run now.

    Args:
        specs: entries to produce: :class:`EntrySpec` or any picklable object with ``name``, ``is_done()``
            and ``run()`` (which must write its result atomically).
        engine: ``"local"`` (this process, or ``workers`` local processes) or ``"ray"``.
        workers: local processes (``engine="local"``), >= 1.
        ray_address: Ray cluster address (None: start or join a local instance).
        desc: the progress bar's label.

    Raises:
        ValueError: on an unknown engine or ``workers < 1``.
        ImportError: for ``engine="ray"`` without ray installed (``pip install 'robust-envs[ray]'``).
    """
    from tqdm import tqdm

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = [s for s in specs if not s.is_done()]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=desc, unit="entry", file=sys.stderr)
    done: list[str] = []
    try:
        if engine == "ray":
            try:
                import ray
            except ImportError as err:
                raise ImportError("engine='ray' needs ray: pip install 'robust-envs[ray]'") from err
            if not ray.is_initialized():
                # a local instance's workers import this checkout; a cluster needs robust-envs installed on its nodes
                path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
                runtime_env = None if ray_address else {"env_vars": {"PYTHONPATH": path}}
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
            remote = ray.remote(num_cpus=1)(_run_entry_ray)
            pending = {remote.remote(s): s for s in todo}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(ready[0])
                ray.get(ready[0])
                done.append(spec.name)
                bar.set_postfix_str(spec.name)
                bar.update(1)
        elif workers == 1:
            for spec in todo:
                bar.set_postfix_str(spec.name)
                _run_spec(spec)
                done.append(spec.name)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_run_spec, s): s for s in todo}
                for fut in as_completed(futures):
                    fut.result()
                    done.append(futures[fut].name)
                    bar.set_postfix_str(futures[fut].name)
                    bar.update(1)
    finally:
        bar.close()
    return done


# ----------------------------------------------------------------------------------------------- tables
def redo_command(path: Path) -> str:
    """The command that rewrites the result JSON ``<dataset>/<method>_seed<k>.json`` (or a generic hint)."""
    import re

    match = re.fullmatch(r"(?P<method>.+)_seed(?P<seed>\d+)\.json", path.name)
    if match is None or match["method"] not in TRAINERS:
        return "regenerate it with the command that wrote it, or delete it"
    return (f"redo it with `python -m benchmarks.leaderboard run --methods {match['method']} --datasets "
            f"{path.parent.name} --seeds {match['seed']} --results-dir {path.parent.parent}` (add the run's other "
            "options, e.g. --n-eval) or delete it")  # fmt: skip


def read_json_or_warn(path: Path, hint: str) -> Any:
    """The parsed JSON at ``path``, or None with a warning naming the file, what is wrong and ``hint`` (what happens
    or what to do) when it is truncated or not JSON. For readers that can skip or redo the entry it holds.
    """
    try:
        return read_json(path, hint=hint)
    except CorruptFileError as err:
        logger.warning("skipping %s", err)
        return None


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """All result records under ``results_dir`` (``<dataset>/<method>_seed<k>.json``), sorted by name.

    A file that is not valid JSON (truncated, half-copied) is skipped with a warning that names it and the command
    that redoes it; the other entries are still returned.
    """
    records = [read_json_or_warn(p, redo_command(p)) for p in sorted(Path(results_dir).glob("*/*.json"))]
    # other studies keep their own JSONs under results/ (policy_loss/, ...): only leaderboard entries count
    return [r for r in records if isinstance(r, dict) and {"method", "dataset", "seed", "robust_acc"} <= set(r)]


def _get(record: dict[str, Any], path: str) -> float | None:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None else float(value)


def _groups(records: list[dict[str, Any]]) -> Iterator[tuple[str, str, int, list[dict[str, Any]]]]:
    """(dataset, method, protocol version, records): entries of different protocol versions never share a row."""
    order = {m: i for i, m in enumerate(TRAINERS)}
    keys = sorted({(r["dataset"], r["method"], protocol_version(r)) for r in records},
                  key=lambda k: (k[0], order.get(k[1], 99), k[1], -k[2]))  # fmt: skip
    for dataset, method, version in keys:
        recs = [r for r in records if (r["dataset"], r["method"], protocol_version(r)) == (dataset, method, version)]
        yield dataset, method, version, sorted(recs, key=lambda r: r["seed"])


def crosscheck_state(record: dict[str, Any]) -> str:
    """``"flagged"``, ``"ok"`` or ``"unchecked"``: the entry's second-library cross-check of its current numbers
    (a check made against an older protocol version does not count).
    """
    cc = record.get("crosscheck")
    if not isinstance(cc, dict) or cc.get("protocol_version", 1) != protocol_version(record):
        return "unchecked"
    return "flagged" if cc.get("flag") else "ok"


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _protocol_check(drows: list[dict[str, Any]]) -> str:
    """The issue-4 sanity check, computed: adversarial training must beat Standard on A_rob without masking."""
    by: dict[str, dict[str, Any]] = {}
    for r in drows:  # A_rob (Linf) is the same under every protocol version: use the row with the most seeds
        if r["method"] not in by or r["seeds"] > by[r["method"]]["seeds"]:
            by[r["method"]] = r
    std = by.get("standard")
    if std is None or std["A_rob"] is None:
        return ""
    parts = []
    for name in ("pgd_at", "trades"):
        r = by.get(name)
        if r is None or r["A_rob"] is None:
            continue
        gap = r["A_rob"][0] - std["A_rob"][0]
        spread = max(r["A_rob"][1], std["A_rob"][1])
        parts.append(f"{name} {gap:+.1f} points over standard (largest seed std {spread:.1f}), "
                     f"masking flags on {r['masking_flags']}/{r['seeds']} entries")  # fmt: skip
    if not parts:
        return ""
    ok = all(by[n]["A_rob"][0] - std["A_rob"][0] > 20 and by[n]["masking_flags"] == 0
             for n in ("pgd_at", "trades") if n in by and by[n]["A_rob"] is not None)  # fmt: skip
    verdict = "passes" if ok else "FAILS"
    return (
        f"\nProtocol check (A_rob of adversarial training vs standard, no masking flag): {verdict}: "
        + "; ".join(parts)
        + ".\n"
    )


#: The columns a protocol version can change (Linf is the same in every version), with their record paths.
_VERSIONED = (("norm_acc.L2", "L2"), ("norm_acc.L1", "L1"), ("union_acc", "Union"), ("average_acc", "Avg"))


def _ranking(values: dict[str, float]) -> list[str]:
    """Methods from the most to the least robust (ties keep name order)."""
    return sorted(values, key=lambda m: (-values[m], m))


def protocol_change(records: list[dict[str, Any]], dataset: str) -> str:
    """Markdown: what re-evaluation under the current protocol changed, from the entries' own records.

    Only entries re-evaluated from an older version count (``reevaluated.history[0]`` holds the numbers they had
    under it): per method, the mean over those seeds of each versioned column before and after, on the same
    checkpoints and the same points, then each column's ranking of the methods under both versions and the pairs
    of methods whose order it swapped. Empty when no entry of ``dataset`` was re-evaluated.
    """
    before: dict[str, dict[str, list[float]]] = {}
    after: dict[str, dict[str, list[float]]] = {}
    versions: set[int] = set()
    for r in records:
        history = r.get("reevaluated", {}).get("history") or []
        if r["dataset"] != dataset or not history or protocol_version(r) != PROTOCOL_VERSION:
            continue
        old = history[0]
        versions.add(int(old.get("protocol_version", 1)))
        for path, header in _VERSIONED:
            v_old, v_new = _get(old, path), _get(r, path)
            if v_old is not None and v_new is not None:
                before.setdefault(r["method"], {}).setdefault(header, []).append(100 * v_old)
                after.setdefault(r["method"], {}).setdefault(header, []).append(100 * v_new)
    if not before:
        return ""
    order = {m: i for i, m in enumerate(TRAINERS)}
    methods = sorted(before, key=lambda m: (order.get(m, 99), m))
    old_label = "/".join(f"v{v}" for v in sorted(versions))
    lines = [f"\n### What protocol v{PROTOCOL_VERSION} changed ({dataset})\n",
             f"Entries re-evaluated from {old_label}: the same checkpoints and points, mean over the re-evaluated "
             f"seeds of each column under {old_label} -> v{PROTOCOL_VERSION} (Linf is unchanged by construction).\n",
             "| Method | Seeds | " + " | ".join(h for _, h in _VERSIONED) + " |",
             "|---|---:|" + "---:|" * len(_VERSIONED)]  # fmt: skip
    for m in methods:
        cells = []
        for _, h in _VERSIONED:
            b, a = before[m].get(h), after[m].get(h)
            cells.append("-" if not b or not a else f"{np.mean(b):.1f} -> {np.mean(a):.1f} ({np.mean(a) - np.mean(b):+.1f})")
        lines.append(f"| {m} | {len(before[m]['L2'])} | " + " | ".join(cells) + " |")
    lines.append("\nRankings (most robust first) and the pairs of methods whose order the new protocol swapped; "
                 "`(within noise)`: under the new protocol the two means differ by less than the larger seed "
                 "standard deviation of the two, so the new order is not established either:\n")
    for _, h in _VERSIONED:
        common = [m for m in methods if before[m].get(h) and after[m].get(h)]
        mean_b = {m: float(np.mean(before[m][h])) for m in common}
        mean_a = {m: float(np.mean(after[m][h])) for m in common}
        rank_b, rank_a = _ranking(mean_b), _ranking(mean_a)
        spread = {m: float(np.std(after[m][h], ddof=1)) if len(after[m][h]) > 1 else 0.0 for m in common}
        swapped = [f"{x} / {y}" + ("" if abs(mean_a[x] - mean_a[y]) > max(spread[x], spread[y]) else " (within noise)")
                   for i, x in enumerate(common) for y in common[i + 1:]
                   if (mean_b[x] - mean_b[y]) * (mean_a[x] - mean_a[y]) < 0]  # fmt: skip
        lines.append(f"- {h}: {old_label} {' > '.join(rank_b)}; v{PROTOCOL_VERSION} {' > '.join(rank_a)}; "
                     + (f"swapped: {', '.join(swapped)}." if swapped else "no pair swapped."))  # fmt: skip
    return "\n".join(lines) + "\n"


def crosscheck_summary(records: list[dict[str, Any]], dataset: str) -> str:
    """Markdown: the second-library cross-check of ``dataset``'s current entries, per norm.

    Over the entries whose ``crosscheck`` was made against their current protocol version: how many were checked
    and flagged (named), and per norm the mean and the lowest ART minus protocol robust accuracy (points, on the
    check's points), the points the protocol leaves robust that ART breaks (``b``, summed over entries, and the
    entries with any), and the points ART leaves robust that the protocol breaks (``c``). Empty when no current
    entry of ``dataset`` was checked.
    """
    current = [r for r in records if r["dataset"] == dataset]
    checked = [r for r in current if crosscheck_state(r) != "unchecked"]
    if not checked:
        return ""
    name = {id(r): f"{r['method']}_seed{r['seed']}" for r in checked}
    flagged = [name[id(r)] for r in checked if crosscheck_state(r) == "flagged"]
    lib = checked[0]["crosscheck"].get("library", "ART")
    lines = [f"\n### Second-library cross-check ({dataset})\n",
             f"{len(checked)} of {len(current)} entries checked against their current protocol version with {lib} "
             f"(`python -m benchmarks.crosscheck`; rule in docs/evaluation.md); flagged: "
             + (", ".join(flagged) if flagged else "none") + ". Per norm, ART minus protocol robust accuracy on the "
             "check's points (negative: ART found more), and the discordant points summed over the entries with "
             "per-point outcomes (b: robust under the protocol, broken by ART; c: the reverse):\n",
             "| Norm | Entries | Mean ART - protocol | Lowest (entry) | b (entries with b > 0) | c | Flagged |",
             "|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
    for norm in ("Linf", "L2", "L1"):
        rows = [(r, r["crosscheck"]["norms"][norm]) for r in checked if norm in r["crosscheck"].get("norms", {})]
        if not rows:
            continue
        diffs = [100 * (n["art_acc"] - n["protocol_acc"]) for _, n in rows]
        low = int(np.argmin(diffs))
        paired = [n for _, n in rows if n.get("paired")]
        b = sum(int(n["b"]) for n in paired)
        c = sum(int(n["c"]) for n in paired)
        with_b = sum(int(n["b"]) > 0 for n in paired)
        lines.append(f"| {norm} | {len(rows)} | {np.mean(diffs):+.1f} | {diffs[low]:+.1f} ({name[id(rows[low][0])]}) "
                     f"| {b} ({with_b}) | {c} | {sum(bool(n['flag']) for _, n in rows)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def build_tables(results_dir: Path, docs_dir: Path) -> dict[str, Path]:
    """Generate ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.png`` in ``docs_dir`` from the JSONs.

    Accuracies are reported in percent as mean +- sample standard deviation (ddof = 1) over seeds.

    Raises:
        FileNotFoundError: when ``results_dir`` holds no result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_results(results_dir)
    if not records:
        raise FileNotFoundError(f"no result JSON under {results_dir}/<dataset>/*.json; run the leaderboard first")
    groups = list(_groups(records))
    rows: list[dict[str, Any]] = []
    for dataset, method, version, recs in groups:
        row: dict[str, Any] = {"dataset": dataset, "method": method, "protocol_version": version,
                               "paper": recs[0]["paper"],
                               "architecture": recs[0]["architecture"], "seeds": len(recs),
                               "epochs": recs[0]["epochs"], "n_eval": recs[0]["n_eval"],
                               "n_autoattack": recs[0]["n_autoattack"]}  # fmt: skip
        for path, header in COLUMNS:
            st = _stats([_get(r, path) for r in recs])
            row[header] = None if st is None else (100 * st[0], 100 * st[1])
        tt = _stats([r["train_time_s"] for r in recs])
        row["train_time_s"] = tt
        row["masking_flags"] = sum(bool(r["masking"] and r["masking"]["any"]) for r in recs)
        states = [crosscheck_state(r) for r in recs]
        row["crosscheck_flags"] = states.count("flagged")
        row["crosscheck_checked"] = len(states) - states.count("unchecked")
        rows.append(row)
    docs_dir.mkdir(parents=True, exist_ok=True)
    # Markdown
    out = io.StringIO()
    out.write("# Leaderboard\n\nGenerated by `python -m benchmarks.leaderboard tables` from "
              f"`{os.path.relpath(results_dir, REPO_ROOT) if Path(results_dir).is_absolute() else results_dir}`; "
              "do not edit by hand. Accuracies in %, mean +- std over seeds (ddof = 1; one seed: its value). "
              "A_rob: per-point worst case over all Linf attacks; L2, L1: per-point worst case in that norm; "
              "Union: worst case over all norms; Avg: mean of Linf (A_rob), L2 and L1. "
              "Masking: entries with any gradient-masking flag. Protocol: the evaluation protocol version the row's "
              "entries were evaluated under (entries of different versions never share a row; the versions differ "
              "only in L2 and L1, so those columns and Union / Avg are not comparable across versions). "
              "ART check: entries whose robust accuracy in some norm under the Adversarial Robustness Toolbox's "
              "attacks is more than 2 points below the protocol's beyond sampling error (`python -m "
              "benchmarks.crosscheck`, docs/evaluation.md), out of the entries checked.\n\nProtocol versions: "
              + "; ".join(f"v{v}: L2 = {n['L2']}, L1 = {n['L1']}" for v, n in sorted(PROTOCOL_NORMS.items()))
              + f" (current: v{PROTOCOL_VERSION}; older rows await `python -m benchmarks.leaderboard reevaluate`).\n")  # fmt: skip
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        drows = [r for r in rows if r["dataset"] == dataset]
        radii = next(rec["threat_models"] for rec in records if rec["dataset"] == dataset)
        first = next(rec for rec in records if rec["dataset"] == dataset)
        out.write(f"\n## {dataset}\n\nRadii: Linf {radii['Linf']:.4g}, L2 {radii['L2']:.4g}, L1 {radii['L1']:.4g} "
                  f"({radii['source']}). Evaluation: {first['n_eval']} seeded test points, AutoAttack on "
                  f"{first['n_autoattack']}; Square black-box check with "
                  f"{first['attacks']['square']['options'].get('n_queries')} queries; A_rob, L2, L1, Union and Avg "
                  f"on the {first['n_combined']} points every attack ran on, the other columns on all "
                  f"{first['n_eval']}. Hardware: {first['hardware']['cpu']}, {first['hardware']['torch_threads']} "
                  "torch thread(s) per entry; times are wall-clock seconds.\n\n")  # fmt: skip
        headers = ["Method", "Protocol", "Arch", "Seeds", "Epochs", *[h for _, h in COLUMNS], "Train time (s)",
                   "Masking", "ART check"]  # fmt: skip
        out.write("| " + " | ".join(headers) + " |\n")
        out.write("|" + "|".join(["---"] * 5 + ["---:"] * (len(COLUMNS) + 1) + ["---", "---"]) + "|\n")
        for r in drows:
            cells = [r["method"], protocol_label(r["protocol_version"]), r["architecture"], str(r["seeds"]),
                     str(r["epochs"])]  # fmt: skip
            one = r["seeds"] == 1  # no spread from a single seed: print the value alone
            cells += ["-" if r[h] is None else f"{r[h][0]:.1f}" if one else f"{r[h][0]:.1f} +- {r[h][1]:.1f}"
                      for _, h in COLUMNS]  # fmt: skip
            tt = r["train_time_s"]
            cells.append(f"{tt[0]:.0f}" if one else f"{tt[0]:.0f} +- {tt[1]:.0f}")
            cells.append(f"{r['masking_flags']}/{r['seeds']}")
            checked = r["crosscheck_checked"]
            cells.append(f"{r['crosscheck_flags']}/{checked} flagged" if checked else "not run")
            out.write("| " + " | ".join(cells) + " |\n")
        papers = {r["method"]: r["paper"] for r in drows}
        out.write("\nMethods: " + "; ".join(f"`{m}`: {p}" for m, p in papers.items()) + ".\n")
        out.write(_protocol_check(drows))
        out.write(protocol_change(records, dataset))
        out.write(crosscheck_summary(records, dataset))
    out.write("\n![clean vs robust accuracy](leaderboard.png)\n")
    paths = {
        "md": docs_dir / "leaderboard.md",
        "csv": docs_dir / "leaderboard.csv",
        "png": docs_dir / "leaderboard.png",
    }
    atomic_write_bytes(paths["md"], out.getvalue().encode())
    # CSV
    buf = io.StringIO()
    writer = csv.writer(buf)
    head = ["dataset", "method", "protocol_version", "architecture", "seeds", "epochs", "n_eval", "n_autoattack"]
    for _, h in COLUMNS:
        head += [f"{h}_mean", f"{h}_std"]
    writer.writerow(head + ["train_time_s_mean", "train_time_s_std", "masking_flags", "crosscheck_flags",
                            "crosscheck_checked"])  # fmt: skip
    for r in rows:
        line = [r[k] for k in head[:8]]
        for _, h in COLUMNS:
            line += ["" if r[h] is None else f"{r[h][0]:.2f}", "" if r[h] is None else f"{r[h][1]:.2f}"]
        writer.writerow(line + [f"{r['train_time_s'][0]:.1f}", f"{r['train_time_s'][1]:.1f}", r["masking_flags"],
                                r["crosscheck_flags"], r["crosscheck_checked"]])  # fmt: skip
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    # Plot: clean vs robust per method; per data set one panel for A_rob (Linf worst case) and one for union
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.6 * len(datasets)), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for panel_row, dataset in zip(axes, datasets, strict=True):
        drows = [r for r in rows if r["dataset"] == dataset]
        methods = list(dict.fromkeys(r["method"] for r in drows))
        for ax, (key, title) in zip(panel_row, (("A_rob", "A_rob (Linf worst case)"), ("Union", "union over norms")),
                                    strict=True):  # fmt: skip
            for r in drows:
                if r[key] is None:
                    continue
                color = colors[methods.index(r["method"]) % len(colors)]
                old = r["protocol_version"] < PROTOCOL_VERSION
                ax.errorbar(r["Clean"][0], r[key][0], xerr=r["Clean"][1], yerr=r[key][1], fmt="o", color=color,
                            capsize=3, mfc="none" if old else color,
                            label=f"{r['method']} v{r['protocol_version']} (n={r['seeds']})")  # fmt: skip
                ax.annotate(r["method"], (r["Clean"][0], r[key][0]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)  # fmt: skip
            ax.set_xlabel("clean accuracy (%)")
            ax.set_ylabel(f"{title} (%)")
            ax.set_title(f"{dataset}: {title}")
            ax.grid(alpha=0.3)
        panel_row[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Clean vs robust accuracy (mean +- std over seeds); hollow: protocol older than v{PROTOCOL_VERSION}")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(paths["png"], png.getvalue())
    return paths


# ----------------------------------------------------------------------------------------------- CLI
def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--train-override expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = json.loads(value) if value not in ("None", "none") else None
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train / evaluate entries, then regenerate the tables")
    run.add_argument("--methods", nargs="+", default=list(TRAINERS), help=f"from {sorted(TRAINERS)}")
    run.add_argument("--datasets", nargs="+", default=["fashion_mnist"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--n-eval", type=int, default=1000, help="evaluation subset size (0: full test set)")
    run.add_argument("--n-autoattack", type=int, default=None, help="AutoAttack on the first N subset points")
    run.add_argument("--square-queries", type=int, default=5000)
    run.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack (quick tests only)")
    run.add_argument("--train-override", nargs="*", default=[], metavar="FIELD=VALUE",
                     help="override training config fields for every method, e.g. epochs=1")  # fmt: skip
    run.add_argument("--engine", choices=["local", "ray"], default="local")
    run.add_argument("--workers", type=int, default=1, help="local processes (engine local)")
    run.add_argument("--ray-address", default=None)
    run.add_argument("--threads", type=int, default=1, help="torch threads per entry")
    run.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    run.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "benchmarks" / "checkpoints"))
    run.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"))
    run.add_argument("--no-tables", action="store_true")
    tab = sub.add_parser("tables", help="regenerate the tables and plot from the result JSONs")
    tab.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    tab.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"))
    rev = sub.add_parser("reevaluate", help="re-evaluate entries of an older protocol version from their checkpoints")
    rev.add_argument("--results-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    rev.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "benchmarks" / "checkpoints"))
    rev.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"))
    rev.add_argument("--methods", nargs="+", default=None)
    rev.add_argument("--datasets", nargs="+", default=None)
    rev.add_argument("--seeds", nargs="+", type=int, default=None)
    rev.add_argument("--limit", type=int, default=None, help="at most N entries in this call")
    rev.add_argument("--order", choices=["name", "cost"], default="name", help="cost: cheapest (recorded) first")
    rev.add_argument("--threads", type=int, default=1, help="torch threads")
    rev.add_argument("--dry-run", action="store_true", help="list the stale entries and stop")
    rev.add_argument("--no-tables", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _git_at_import()  # record the commit before any entry runs
    if args.command == "run":
        for m in args.methods:
            get_trainer(m)
        eval_cfg = EvalConfig(
            n_eval=args.n_eval or None, n_autoattack=args.n_autoattack, square_queries=args.square_queries,
            autoattack=not args.no_autoattack,
        )  # fmt: skip
        overrides = tuple(sorted(_parse_overrides(args.train_override).items()))
        specs = [
            EntrySpec(
                method=m,
                dataset=d,
                seed=s,
                results_dir=args.results_dir,
                checkpoint_dir=args.checkpoint_dir,
                train_overrides=overrides,
                eval_config=tuple(dataclasses.asdict(eval_cfg).items()),
                threads=args.threads,
            )  # fmt: skip
            for d in args.datasets
            for s in args.seeds
            for m in args.methods
        ]
        t0 = time.perf_counter()
        ran = run_leaderboard(specs, engine=args.engine, workers=args.workers, ray_address=args.ray_address)
        print(f"ran {len(ran)} entries ({len(specs) - len(ran)} already done) in {time.perf_counter() - t0:.0f}s")
    if args.command == "reevaluate":
        if args.dry_run:
            for path in sorted(Path(args.results_dir).glob("*/*.json")):
                rec = read_json_or_warn(path, redo_command(path))
                if isinstance(rec, dict) and "eval_config" in rec and protocol_version(rec) < PROTOCOL_VERSION:
                    print(
                        f"stale (v{protocol_version(rec)}): {path} (last evaluation {rec.get('eval_time_s', 0):.0f} s)"
                    )
            return 0
        t0 = time.perf_counter()
        ran = reevaluate(Path(args.results_dir), Path(args.checkpoint_dir), args.methods, args.seeds, args.datasets,
                         args.limit, args.order, args.threads)  # fmt: skip
        print(f"re-evaluated {len(ran)} entries in {time.perf_counter() - t0:.0f}s: {', '.join(ran) or 'none stale'}")
    if args.command == "tables" or not args.no_tables:
        paths = build_tables(Path(args.results_dir), Path(args.docs_dir))
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
