"""Loading the noise network eps_theta: diffusers folders, hub ids (offline from the local cache) and
the embedded Fashion-MNIST default.

The embedded default (``robust_envs/assets/ddpm_fmnist``) is itself a diffusers folder: a
``UNet2DModel`` trained by ``scripts/train_unet.py`` (see the folder's ``CARD.md``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_envs.diffusion.schedule import NoiseSchedule

__all__ = ["EMBEDDED_UNET", "NoiseModel", "load_noise_model"]

EMBEDDED_UNET = Path(__file__).resolve().parents[1] / "assets" / "ddpm_fmnist"


@dataclass
class NoiseModel:
    """A frozen epsilon-prediction network with its noise schedule.

    Attributes:
        unet: a diffusers ``UNet2DModel`` (or any module ``unet(x, t).sample``), in eval mode, no grad.
        schedule: the :class:`NoiseSchedule` it was trained with.
        source: where it was loaded from (folder, hub id or ``"embedded"``).
    """

    unet: nn.Module
    schedule: NoiseSchedule
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        cfg: Any = self.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(cfg.in_channels), int(h), int(w))

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, timestep).

        Args:
            x_t: ``(N, C, H, W)`` float32 on the model's device.
            timestep: ``(N,)`` float tensor of *network* timesteps (``t - 1`` for paper step t; may be
                fractional under attack).

        Raises:
            TypeError: if ``timestep`` is not a floating tensor (diffusers would truncate it).
        """
        if not (torch.is_tensor(timestep) and timestep.is_floating_point()):
            raise TypeError(
                f"timestep must be a float tensor so fractional perturbations reach the network, got {type(timestep)}"
            )
        return self.unet(x_t, timestep).sample


def load_noise_model(
    model: str | os.PathLike[str] = "embedded", device: str | torch.device = "cpu", local_files_only: bool | None = None
) -> NoiseModel:
    """Load an epsilon-prediction ``UNet2DModel`` and its schedule.

    Args:
        model: ``"embedded"`` (the Fashion-MNIST default), a diffusers folder (a ``UNet2DModel`` folder with
            ``config.json``, or a pipeline folder with ``unet/`` and ``scheduler/``), or a hub id such as
            ``"google/ddpm-cifar10-32"`` (read from the local Hugging Face cache).
        device: torch device.
        local_files_only: for hub ids, only use the local cache (default: True unless
            ``ROBUST_ENVS_ALLOW_DOWNLOAD=1``).

    The schedule comes from ``scheduler_config.json`` (in the folder or ``scheduler/``) when present, else
    the linear 1e-4..0.02, T = 1000 schedule.

    Raises:
        FileNotFoundError: if the folder or hub id cannot be found locally; the message says what to do.
        ValueError: if the model does not predict epsilon or the schedule is unsupported.
    """
    from diffusers import UNet2DModel

    source = str(model)
    path = EMBEDDED_UNET if source == "embedded" else Path(source).expanduser()
    if source == "embedded" and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded noise network is missing from {path}; reinstall robust-envs or run "
            "`python scripts/train_unet.py` to rebuild it"
        )
    sched_cfg: dict = {}
    if path.is_dir():
        sub = "unet" if (path / "unet" / "config.json").is_file() else None
        if sub is None and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds neither config.json nor unet/config.json: not a diffusers folder")
        try:
            unet = UNet2DModel.from_pretrained(path, subfolder=sub)
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load a UNet2DModel from {path}: {err}") from err
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                sched_cfg = json.loads(cand.read_text())
                break
    elif "/" in source and not source.startswith((".", "/")):
        offline = os.environ.get("ROBUST_ENVS_ALLOW_DOWNLOAD") != "1" if local_files_only is None else local_files_only
        try:
            unet = _from_hub(source, offline)
        except OSError as err:
            raise FileNotFoundError(
                f"hub id {source!r} is not in the local Hugging Face cache ({err.__class__.__name__}). Download it on a "
                "machine online (`huggingface-cli download " + source + "`) and copy the folder here, pass its local "
                "path, or set ROBUST_ENVS_ALLOW_DOWNLOAD=1 where the hub is reachable."
            ) from err
        sched_cfg = _hub_scheduler_config(source, offline)
    else:
        raise FileNotFoundError(
            f"model {source!r} is neither 'embedded', an existing diffusers folder, nor a hub id 'owner/name'"
        )
    pred = sched_cfg.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise ValueError(f"only epsilon-prediction models are supported, {source} predicts {pred!r}")
    schedule = NoiseSchedule.from_diffusers_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
    unet = unet.to(device).eval().requires_grad_(False)
    return NoiseModel(unet=unet, schedule=schedule, source=source)


def _from_hub(repo_id: str, local_files_only: bool) -> nn.Module:
    from diffusers import UNet2DModel

    try:
        return UNet2DModel.from_pretrained(repo_id, subfolder="unet", local_files_only=local_files_only)
    except OSError:
        return UNet2DModel.from_pretrained(repo_id, local_files_only=local_files_only)


def _hub_scheduler_config(repo_id: str, local_files_only: bool) -> dict:
    from huggingface_hub import hf_hub_download

    for name in ("scheduler/scheduler_config.json", "scheduler_config.json"):
        try:
            return json.loads(Path(hf_hub_download(repo_id, name, local_files_only=local_files_only)).read_text())
        except Exception:  # noqa: BLE001 - a missing optional file is not an error
            continue
    return {}
