"""Loading the noise network eps_theta: diffusers folders, hub ids (offline from the local cache), original
DDIM / improved-diffusion / guided-diffusion checkpoints (:mod:`robust_envs.diffusion.checkpoints`) and the
embedded Fashion-MNIST default.

The embedded default (``robust_envs/assets/ddpm_fmnist``) is itself a diffusers folder: a
``UNet2DModel`` trained by ``scripts/train_unet.py`` (see the folder's ``CARD.md``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_envs.diffusion.schedule import NoiseSchedule
from robust_envs.fileio import CorruptFileError, read_json

__all__ = ["EMBEDDED_UNET", "NoiseModel", "load_noise_model", "model_weights_id"]

logger = logging.getLogger(__name__)

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


def model_weights_id(model: str | os.PathLike[str] = "embedded") -> str:
    """What identifies a ``model`` argument's weights, for results keyed by the model.

    Returns ``"sha256:<16 hex>"`` of the weight files (:func:`robust_envs.fileio.weights_digest`) for
    ``"embedded"`` and for a local folder or checkpoint, so a model retrained in place is a different model;
    a hub id is returned as it is (``"hub:<id>"``; its cached revision is not hashed).
    """
    from robust_envs.fileio import weights_digest

    source = str(model)
    path = EMBEDDED_UNET if source == "embedded" else Path(source).expanduser()
    if path.exists():
        return "sha256:" + weights_digest(path)
    return "hub:" + source


def load_noise_model(
    model: str | os.PathLike[str] = "embedded", device: str | torch.device = "cpu", local_files_only: bool | None = None
) -> NoiseModel:
    """Load an epsilon-prediction ``UNet2DModel`` and its schedule.

    Args:
        model: ``"embedded"`` (the Fashion-MNIST default); a diffusers folder (a ``UNet2DModel`` folder with
            ``config.json``, or a pipeline folder with ``unet/`` and ``scheduler/``); an original checkpoint file
            (ermongroup/ddim ``ckpt.pth`` with its ``config.yml`` beside it, or an improved/guided-diffusion ``.pt``
            with its flags beside it; see :func:`robust_envs.diffusion.checkpoints.load_checkpoint` and
            ``docs/checkpoints.md``) or a folder holding one; or a hub id such as ``"google/ddpm-cifar10-32"``
            (read from the local Hugging Face cache).
        device: torch device.
        local_files_only: for hub ids, only use the local cache (default: True unless
            ``ROBUST_ENVS_ALLOW_DOWNLOAD=1``).

    The schedule comes from ``scheduler_config.json`` (in the folder or ``scheduler/``) when present, from the
    checkpoint's config for original checkpoints, else the linear 1e-4..0.02, T = 1000 schedule.

    Raises:
        FileNotFoundError: if the folder, checkpoint, config or hub id cannot be found locally; the message says
            what to do.
        robust_envs.fileio.CorruptFileError: if a config, scheduler config or weights file is truncated or
            malformed (a ``ValueError``; the message names the file).
        ValueError: if the model does not predict epsilon, the schedule is unsupported, or the weights do not fit
            the config.
    """
    source = str(model)
    path = EMBEDDED_UNET if source == "embedded" else Path(source).expanduser()
    if source == "embedded" and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded noise network is missing from {path}; reinstall robust-envs or run "
            "`python scripts/train_unet.py` to rebuild it"
        )
    sched_cfg: dict = {}
    if path.is_file() or (path.is_dir() and _holds_checkpoint(path)):
        from robust_envs.diffusion.checkpoints import load_checkpoint

        converted = load_checkpoint(path)
        unet = converted.unet.to(device)
        logger.info("loaded %s checkpoint %s (%s)", converted.format, converted.checkpoint, "; ".join(converted.notes))
        return NoiseModel(unet=unet, schedule=converted.schedule, source=source)
    if path.is_dir():
        unet = _load_diffusers_folder(path)
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                sched_cfg = read_json(cand, hint="restore it from the model's release (a diffusers scheduler config)")
                break
    elif "/" in source and not source.startswith((".", "/", "~")) and Path(source).suffix not in _FILE_SUFFIXES:
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
            f"model {source!r} is neither 'embedded', an existing diffusers folder or checkpoint file, nor a hub id "
            "'owner/name'"
        )
    pred = sched_cfg.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise ValueError(f"only epsilon-prediction models are supported, {source} predicts {pred!r}")
    schedule = NoiseSchedule.from_diffusers_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
    unet = unet.to(device).eval().requires_grad_(False)
    return NoiseModel(unet=unet, schedule=schedule, source=source)


_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: Suffixes that make a missing ``model=`` a missing file rather than a hub id.
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".json", ".yml", ".yaml")


def _holds_checkpoint(path: Path) -> bool:
    """A folder that is not a diffusers folder but holds an original checkpoint (e.g. ermongroup/ddim's log folder)."""
    from robust_envs.diffusion.checkpoints import CHECKPOINT_SUFFIXES

    if (path / "config.json").is_file() or (path / "unet").is_dir():
        return False
    return any(f.suffix in CHECKPOINT_SUFFIXES and f.name not in _WEIGHT_NAMES for f in path.iterdir() if f.is_file())


def unet2d_class() -> Any:
    """The ``UNet2DModel`` class of diffusers, imported without bitsandbytes' CPU-kernel warning.

    diffusers imports bitsandbytes (installed for pyiqa's quantised Q-Align) when it loads any model, and
    bitsandbytes then logs a warning about an optional 4-bit CPU kernel package (`kernels`) at import. The env never
    quantises the UNet, so that one logger is set to errors only; nothing else is silenced.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from diffusers import UNet2DModel

    return UNet2DModel


def _load_diffusers_folder(path: Path) -> nn.Module:
    """``UNet2DModel.from_pretrained`` with the config and weights checked first, so that errors name the file."""
    UNet2DModel = unet2d_class()

    sub = "unet" if (path / "unet").is_dir() else None
    folder = path / sub if sub else path
    cfg_file = folder / "config.json"
    hint = "restore the config.json saved with the weights (UNet2DModel.save_pretrained writes both)"
    if not cfg_file.is_file():
        weights = [n for n in _WEIGHT_NAMES if (folder / n).is_file()]
        what = f"weights {weights} but " if weights else ""
        raise FileNotFoundError(
            f"{folder} holds {what}no config.json: not a diffusers folder (UNet2DModel). {hint[0].upper() + hint[1:]}; "
            "an original DDIM / improved-diffusion checkpoint loads from its file with its own config beside it "
            "(docs/checkpoints.md)."
        )
    cfg = read_json(cfg_file, hint=hint)
    if not isinstance(cfg, dict):
        raise CorruptFileError(cfg_file, f"expected a JSON object, got {type(cfg).__name__}", hint)
    cls = cfg.get("_class_name")
    if cls not in (None, "UNet2DModel"):
        raise CorruptFileError(
            cfg_file, f"describes a {cls}, not a UNet2DModel", "point model= at a UNet2DModel folder"
        )
    weights_file = next((folder / n for n in _WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{folder} has {cfg_file.name} but no weights ({' or '.join(_WEIGHT_NAMES)})")
    if weights_file.suffix == ".safetensors":
        _check_safetensors(weights_file)
    try:
        return UNet2DModel.from_pretrained(path, subfolder=sub)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0][:400]
        raise ValueError(
            f"could not load a UNet2DModel from {folder}: the weights {weights_file.name} and {cfg_file} do not "
            f"agree or one is damaged ({err.__class__.__name__}: {first}). {hint[0].upper() + hint[1:]}."
        ) from err


def _check_safetensors(path: Path) -> None:
    """Open a safetensors file's header (cheap: no tensor is read); a truncated file fails here, named."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(
            path, f"not a readable safetensors file ({path.stat().st_size} bytes; {err})", "copy or download it again"
        ) from err


def _from_hub(repo_id: str, local_files_only: bool) -> nn.Module:
    UNet2DModel = unet2d_class()

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
