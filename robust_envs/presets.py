"""Presets: a paper's experimental settings in one place, and a check of what this machine lacks to run them.

Usage::

    python -m robust_envs.presets check            # every preset: weights, GPU, memory, packages, data
    python -m robust_envs.presets check seed000_celeba64 --json

    import gymnasium as gym
    from robust_envs.presets import SEED000_CELEBA64

    SEED000_CELEBA64.require()                      # raises PresetNotReady listing everything missing
    env = gym.make("DDIMSigma-v0", **SEED000_CELEBA64.env_kwargs(t_c=40))

:data:`SEED000_CELEBA64` is seed 000's CelebA experiment (sec. 5.1): the original DDIM CelebA 64x64 checkpoint
(ermongroup/ddim, EMA weights, linear betas 1e-4..0.02, T = 1000), Q-Align as the evaluator, the t_c grid of
Fig. 7 (10..60), the timestep attack ``t + clip(0.01 * N(0, 1), -0.05, 0.05)``, sigma = 0 as the baseline, PPO with
clip 0.2 and gamma 0.995, 500 evaluation samples. The paper does not state the stride d above t_c; the preset
uses d = 10 (100 DDIM steps over T = 1000, a setting of the DDIM paper's CelebA experiments). See
``docs/checkpoints.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["PRESETS", "SEED000_CELEBA64", "Preset", "PresetNotReady", "Requirement", "main"]


class PresetNotReady(RuntimeError):
    """Raised by :meth:`Preset.require` when a required piece is missing; the message lists each one."""


@dataclass(frozen=True)
class Requirement:
    """One thing a preset needs.

    Attributes:
        kind: ``"weights"``, ``"gpu"``, ``"memory"``, ``"package"`` or ``"data"``.
        what: what is needed.
        ok: whether this machine has it.
        detail: where it was found, or how to get it.
        required: False for what only some measurements need (the run works without it).
    """

    kind: str
    what: str
    ok: bool
    detail: str
    required: bool = True


@dataclass(frozen=True)
class Preset:
    """The settings of one experiment and the resources it needs.

    Attributes:
        name: the preset's key in :data:`PRESETS`.
        paper: the source and section.
        model_var: environment variable naming the noise-model checkpoint (a file with its config beside it).
        model_default: where the checkpoint is looked for when ``model_var`` is unset.
        model_source: where the original checkpoint comes from.
        evaluator: the quality evaluator (``"qalign"``).
        t_c_grid: the critical timesteps of the paper's figure.
        stride: d, the DDIM stride above t_c.
        attack, attack_scale, attack_clip: the timestep attack (seed 000 sec. 5.1.3).
        baseline_sigma: the fixed schedule the agent is compared with.
        n_eval: evaluation samples per setting.
        ppo: the agent's PPO settings stated in the paper.
        data_var: environment variable naming the real images of the data set (only for independent measures).
        min_gpu_gib: GPU memory the run needs (evaluator + noise model + activations), GiB.
    """

    name: str
    paper: str
    model_var: str
    model_default: str
    model_source: str
    evaluator: str
    t_c_grid: tuple[int, ...]
    stride: int
    attack: str
    attack_scale: float
    attack_clip: float
    baseline_sigma: float
    n_eval: int
    ppo: dict[str, float] = field(default_factory=dict)
    data_var: str | None = None
    data_note: str = ""
    min_gpu_gib: float = 18.0

    def model_path(self) -> Path:
        """The checkpoint: ``$model_var`` if set, else :attr:`model_default`."""
        return Path(os.environ.get(self.model_var) or self.model_default).expanduser()

    def env_kwargs(self, t_c: int | None = None, device: str = "cuda", **overrides: Any) -> dict[str, Any]:
        """``gym.make("DDIMSigma-v0", **kwargs)`` arguments for one t_c of the grid (default: its first).

        Raises:
            ValueError: if ``t_c`` is not a positive int.
        """
        t_c = self.t_c_grid[0] if t_c is None else t_c
        if isinstance(t_c, bool) or not isinstance(t_c, int) or t_c < 1:
            raise ValueError(f"t_c must be a positive int (the paper's grid: {self.t_c_grid}), got {t_c!r}")
        kwargs: dict[str, Any] = {
            "model": str(self.model_path()),
            "evaluator": self.evaluator,
            "t_c": t_c,
            "stride": self.stride,
            "attack": self.attack,
            "attack_scale": self.attack_scale,
            "attack_clip": self.attack_clip,
            "baseline_sigma": self.baseline_sigma,
            "device": device,
        }
        kwargs.update(overrides)
        return kwargs

    def check(self) -> list[Requirement]:
        """What this machine has and lacks for the preset (nothing heavy is loaded)."""
        from robust_envs.diffusion.checkpoints import find_config
        from robust_envs.quality.pyiqa_metrics import QALIGN_REPO, _qalign_weights_cached

        reqs: list[Requirement] = []
        ckpt = self.model_path()
        how = f"set {self.model_var} to the checkpoint file (default {self.model_default}); {self.model_source}"
        if not ckpt.is_file():
            reqs.append(Requirement("weights", "DDIM checkpoint", False, f"{ckpt} not found; {how}"))
        else:
            try:
                cfg = find_config(ckpt, "ddim")
                reqs.append(Requirement("weights", "DDIM checkpoint", True, f"{ckpt} with {cfg.name}"))
            except FileNotFoundError as err:
                reqs.append(Requirement("weights", "DDIM checkpoint config", False, str(err)))
        qalign_ok = _qalign_weights_cached()
        reqs.append(Requirement(
            "weights", f"Q-Align weights ({QALIGN_REPO})", qalign_ok,
            "in the Hugging Face cache" if qalign_ok else f"not in the Hugging Face cache; on a machine online run "
            f"`huggingface-cli download {QALIGN_REPO}` and copy ~/.cache/huggingface/hub here",
        ))  # fmt: skip
        try:
            __import__("icecream")
            reqs.append(Requirement("package", "icecream (pyiqa's Q-Align imports it)", True, "installed"))
        except ImportError:
            reqs.append(Requirement("package", "icecream (pyiqa's Q-Align imports it)", False,
                                    "pip install 'robust-envs[qalign]'"))  # fmt: skip
        gpu = torch.cuda.is_available()
        reqs.append(Requirement("gpu", "a CUDA GPU (Q-Align is a 7B model)", gpu,
                                torch.cuda.get_device_name(0) if gpu else "torch.cuda.is_available() is False"))  # fmt: skip
        if gpu:
            free = torch.cuda.mem_get_info(0)[0] / 2**30
            reqs.append(Requirement("memory", f"{self.min_gpu_gib:.0f} GiB free GPU memory", free >= self.min_gpu_gib,
                                    f"{free:.1f} GiB free on cuda:0"))  # fmt: skip
        else:
            reqs.append(Requirement("memory", f"{self.min_gpu_gib:.0f} GiB free GPU memory", False, "no GPU to check"))
        if self.data_var:
            root = os.environ.get(self.data_var) or ""
            ok = bool(root) and Path(root).is_dir()
            detail = root if ok else f"set {self.data_var} to the folder"
            reqs.append(Requirement("data", self.data_note, ok, detail, required=False))
        return reqs

    def missing(self) -> list[Requirement]:
        """The required pieces this machine lacks."""
        return [r for r in self.check() if r.required and not r.ok]

    def require(self) -> None:
        """Raise :class:`PresetNotReady` naming every missing required piece (weights, GPU, memory, packages)."""
        gaps = self.missing()
        if gaps:
            lines = "\n".join(f"  - [{r.kind}] {r.what}: {r.detail}" for r in gaps)
            raise PresetNotReady(f"preset {self.name!r} cannot run here; missing:\n{lines}")


SEED000_CELEBA64 = Preset(
    name="seed000_celeba64",
    paper="Hong, seed 000, sec. 5.1 and Fig. 7 (left): DDIM on CelebA 64x64",
    model_var="ROBUST_ENVS_CELEBA64_DDIM",
    model_default="~/.cache/robust_envs/ddim_celeba64/ckpt.pth",
    model_source=(
        "the ermongroup/ddim README links the CelebA 64x64 checkpoint; put its ckpt.pth there with "
        "configs/celeba.yml of ermongroup/ddim beside it as config.yml"
    ),  # fmt: skip
    evaluator="qalign",
    t_c_grid=(10, 20, 30, 40, 50, 60),
    stride=10,
    attack="gaussian",
    attack_scale=0.01,
    attack_clip=0.05,
    baseline_sigma=0.0,
    n_eval=500,
    ppo={"clip_range": 0.2, "gamma": 0.995},
    data_var="ROBUST_ENVS_CELEBA",
    data_note="CelebA images (64x64 crops) for FID-style independent measures; the env itself needs no data",
)

#: Every preset by name.
PRESETS: dict[str, Preset] = {SEED000_CELEBA64.name: SEED000_CELEBA64}


def main(argv: list[str] | None = None) -> int:
    """``python -m robust_envs.presets check [NAME ...] [--json]`` / ``show NAME``; exit 1 if a preset lacks a
    required piece.
    """
    p = argparse.ArgumentParser(prog="python -m robust_envs.presets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="list what each preset needs and what this machine lacks")
    chk.add_argument("names", nargs="*", metavar="NAME", help=f"presets to check (default all: {', '.join(PRESETS)})")
    chk.add_argument("--json", action="store_true", help="print JSON instead of text")
    show = sub.add_parser("show", help="print a preset's settings")
    show.add_argument("name", choices=list(PRESETS))
    args = p.parse_args(argv)
    if args.command == "show":
        preset = PRESETS[args.name]
        print(json.dumps({**asdict(preset), "env_kwargs": preset.env_kwargs()}, indent=2))
        return 0
    names = args.names or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown preset(s) {unknown}; valid: {', '.join(PRESETS)}")
    report: dict[str, list[dict[str, Any]]] = {n: [asdict(r) for r in PRESETS[n].check()] for n in names}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, reqs in report.items():
            print(f"{name}: {PRESETS[name].paper}")
            for r in reqs:
                mark = "ok     " if r["ok"] else ("MISSING" if r["required"] else "absent ")
                print(f"  {mark} [{r['kind']}] {r['what']}: {r['detail']}")
    ready = all(r["ok"] or not r["required"] for reqs in report.values() for r in reqs)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
