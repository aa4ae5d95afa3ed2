"""Original DDIM and OpenAI improved/guided-diffusion checkpoints as diffusers ``UNet2DModel`` noise networks.

Seed 000 samples DDIM models trained on CelebA 64x64 and ImageNet 64x64 (linear schedule, T = 1000). Researchers
hold such models in the formats of the codebases that trained them; this module reads two of them and converts the
weights, tensor by tensor, into diffusers' ``UNet2DModel`` layout (the approach of diffusers'
``scripts/convert_ddpm_original_checkpoint_to_diffusers.py``), so the env runs them like any other model.

Formats (see ``docs/checkpoints.md``):

- ``"ddim"``: ermongroup/ddim (Song et al. 2020, https://github.com/ermongroup/ddim), ``models/diffusion.py``
  ``Model``. The checkpoint is ``ckpt.pth``: either a bare state dict or the runner's list
  ``[model, optimizer, epoch, step(, ema)]``; the EMA weights (the last entry, written by ``EMAHelper``) are used
  when present and the config has ``model.ema`` true, as the original sampler does; ``module.`` prefixes
  (``DataParallel``) are stripped. The config is the YAML the run used (``configs/celeba.yml``, or the
  ``config.yml`` the runner writes next to ``ckpt.pth``, which is an ``argparse.Namespace`` dump).
- ``"openai"``: openai/improved-diffusion (Nichol & Dhariwal 2021) and openai/guided-diffusion (Dhariwal & Nichol
  2021) ``unet.py`` ``UNetModel``, saved by ``th.save(model.state_dict())`` as ``*.pt``. The architecture comes
  from the model flags of the README (``--image_size 64 --num_channels 128 ...``), given as a JSON object or as
  the flag string in a text file. With ``learn_sigma`` the network outputs ``[eps, v]``: only the eps channels of
  the last convolution are kept (exact, as that convolution is the last layer).

Every detail maps exactly onto ``UNet2DModel``: the timestep embedding (``freq_shift``/``flip_sin_to_cos``),
DDIM's asymmetric down-sampling padding (``downsample_padding=0``), scale-shift norm (``resnet_time_scale_shift``),
residual up/down-sampling blocks (``ResnetDownsampleBlock2D``/``downsample_type="resnet"``), the legacy and new
qkv head layouts (a permutation of rows), and resampling without convolution (fixed averaging / identity kernels).
Two settings ``UNet2DModel``'s config cannot express are set on the built modules and listed in
:attr:`ConvertedCheckpoint.notes`: a fixed number of heads with varying channels (``num_heads`` > 1 without
``num_head_channels``: each attention module's ``heads`` and ``scale``), and improved-diffusion's
``rescale_timesteps`` with T != 1000 (``time_proj.scale = 1000 / T``). A ``UNet2DModel`` saved with
``save_pretrained`` after such a patch would lose it; reload from the original checkpoint instead.

Not supported (a clear error says so): class-conditional checkpoints (the env passes no class label),
``predict_xstart`` models, guided-diffusion's ``channel_mult`` with a first entry other than 1 (the 512x512 model),
and ermongroup/ddim beta schedules other than linear, quad and const.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from robust_envs.diffusion.schedule import NoiseSchedule
from robust_envs.fileio import CorruptFileError, read_json, read_safetensors, read_torch

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointFormat",
    "ConvertedCheckpoint",
    "DDIMArch",
    "OpenAIArch",
    "convert_ddim_state_dict",
    "convert_openai_state_dict",
    "ddim_arch",
    "detect_format",
    "find_config",
    "load_checkpoint",
    "openai_arch",
    "read_ddim_config",
    "read_openai_flags",
    "read_state_dict",
]

CheckpointFormat = Literal["ddim", "openai"]
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
#: Sidecar files searched next to a checkpoint, per format (``{stem}`` is the checkpoint's file name stem).
CONFIG_NAMES: dict[str, tuple[str, ...]] = {
    "ddim": ("{stem}.yml", "{stem}.yaml", "config.yml", "config.yaml"),
    "openai": ("{stem}.json", "{stem}.flags", "{stem}.txt", "flags.json", "model_flags.json", "flags.txt"),
}
_HINT = "copy or download the checkpoint again (the original release's file, complete)"


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """An original checkpoint converted to a diffusers noise network.

    Attributes:
        unet: ``UNet2DModel`` (epsilon prediction, eval mode, float32 on the CPU).
        schedule: the noise schedule the model was trained with (from its config / flags).
        format: ``"ddim"`` or ``"openai"``.
        checkpoint: the weights file read.
        config: the config / flags file read.
        notes: what was chosen or patched (EMA or raw weights, eps channels, per-module heads, timestep scale).
    """

    unet: nn.Module
    schedule: NoiseSchedule
    format: CheckpointFormat
    checkpoint: Path
    config: Path
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- reading files
def read_state_dict(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint file: ``.safetensors`` with safetensors, anything else with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        CorruptFileError: if it is truncated or not a checkpoint (the message names the file).
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors(p, hint=_HINT)
    return read_torch(p, hint=_HINT)


class _NamespaceLoader:
    """A ``yaml.SafeLoader`` that also reads the ``argparse.Namespace`` dumps ermongroup/ddim writes as ``config.yml``
    (``!!python/object:argparse.Namespace``), as plain mappings; no other Python object is constructed.
    """

    @staticmethod
    def make() -> type:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def namespace(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
            return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]

        Loader.add_constructor("tag:yaml.org,2002:python/object:argparse.Namespace", namespace)
        return Loader


def read_ddim_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an ermongroup/ddim YAML config (``configs/celeba.yml`` or a run's ``config.yml``) as nested dicts.

    Raises:
        CorruptFileError: if the YAML cannot be parsed or lacks the ``model`` / ``data`` / ``diffusion`` sections.
    """
    import yaml

    p = Path(path)
    hint = "use the config the model was trained with (ermongroup/ddim configs/<dataset>.yml)"
    try:
        cfg = yaml.load(p.read_text(encoding="utf-8"), Loader=_NamespaceLoader.make())  # noqa: S506 - safe loader
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CorruptFileError(p, f"not a readable YAML file ({err.__class__.__name__}: {err})", hint) from err
    if not isinstance(cfg, dict) or not {"model", "data", "diffusion"} <= set(cfg):
        have = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise CorruptFileError(
            p, f"not an ermongroup/ddim config: needs sections model, data, diffusion; has {have}", hint
        )
    return cfg


_FLAG = re.compile(r"--([A-Za-z_][\w-]*)(?:[ =]+|$)(\"[^\"]*\"|'[^']*'|[^\s\"']+)?")


def _parse_value(text: str) -> Any:
    text = text.strip("\"'")
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_openai_flags(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read improved/guided-diffusion model flags: a JSON object, or text holding ``--name value`` pairs (the README's
    ``MODEL_FLAGS="--image_size 64 --num_channels 128 ..."`` lines work as they are).

    Raises:
        CorruptFileError: if the JSON is invalid or not an object, or the text holds no ``--flag``.
    """
    p = Path(path)
    hint = "write the flags the model was trained with (the README's MODEL_FLAGS and DIFFUSION_FLAGS)"
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".json" or text.lstrip().startswith("{"):
        flags = read_json(p, hint=hint)
        if not isinstance(flags, dict):
            raise CorruptFileError(p, f"flags JSON must be an object, got {type(flags).__name__}", hint)
        return flags
    flags = {m.group(1).replace("-", "_"): _parse_value(m.group(2) or "True") for m in _FLAG.finditer(text)}
    if not flags:
        raise CorruptFileError(p, "no --flag value pairs found", hint)
    return flags


# ----------------------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class DDIMArch:
    """ermongroup/ddim ``Model`` hyper-parameters (``config.model`` / ``config.data``) and its schedule."""

    ch: int
    out_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    in_channels: int
    resolution: int
    resamp_with_conv: bool
    ema: bool
    schedule: NoiseSchedule = field(repr=False)

    def unet_config(self) -> dict[str, Any]:
        """``UNet2DModel`` keyword arguments describing the same network."""
        levels = len(self.ch_mult)
        attn = [self.resolution // 2**i in self.attn_resolutions for i in range(levels)]
        return {
            "sample_size": self.resolution,
            "in_channels": self.in_channels,
            "out_channels": self.out_ch,
            "time_embedding_type": "positional",
            "flip_sin_to_cos": False,  # DDIM: [sin, cos]
            "freq_shift": 1,  # DDIM: log(10000) / (half - 1)
            "block_out_channels": [self.ch * m for m in self.ch_mult],
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            "layers_per_block": self.num_res_blocks,
            "downsample_padding": 0,  # DDIM pads (0, 1, 0, 1) then convolves with stride 2
            "dropout": self.dropout,
            "act_fn": "silu",
            "attention_head_dim": None,  # one head over all channels
            "norm_num_groups": 32,
            "norm_eps": 1e-6,
            "resnet_time_scale_shift": "default",
            "add_attention": True,
        }


def _get(cfg: Mapping[str, Any], section: str, key: str, default: Any = ...) -> Any:
    sec = cfg.get(section) or {}
    if key in sec:
        return sec[key]
    if default is ...:
        raise KeyError(f"{section}.{key}")
    return default


def ddim_arch(cfg: Mapping[str, Any], source: str | os.PathLike[str] = "config") -> DDIMArch:
    """Architecture and schedule from an ermongroup/ddim config (see :func:`read_ddim_config`).

    The schedule follows ``get_beta_schedule`` of ermongroup/ddim: ``linear`` (linspace of betas), ``quad``
    (linspace of sqrt(beta), squared) or ``const``.

    Raises:
        CorruptFileError: if a required field is missing or the beta schedule is not supported.
    """
    hint = "use the config the model was trained with (ermongroup/ddim configs/<dataset>.yml)"
    try:
        T = int(_get(cfg, "diffusion", "num_diffusion_timesteps"))
        kind = str(_get(cfg, "diffusion", "beta_schedule"))
        start, end = float(_get(cfg, "diffusion", "beta_start")), float(_get(cfg, "diffusion", "beta_end"))
        arch: dict[str, Any] = {
            "ch": int(_get(cfg, "model", "ch")),
            "out_ch": int(_get(cfg, "model", "out_ch")),
            "ch_mult": tuple(int(m) for m in _get(cfg, "model", "ch_mult")),
            "num_res_blocks": int(_get(cfg, "model", "num_res_blocks")),
            "attn_resolutions": tuple(int(r) for r in _get(cfg, "model", "attn_resolutions")),
            "dropout": float(_get(cfg, "model", "dropout", 0.0)),
            "in_channels": int(_get(cfg, "model", "in_channels")),
            "resolution": int(_get(cfg, "data", "image_size")),
            "resamp_with_conv": bool(_get(cfg, "model", "resamp_with_conv", True)),
            "ema": bool(_get(cfg, "model", "ema", False)),
        }
    except KeyError as err:
        raise CorruptFileError(source, f"the config lacks {err.args[0]}", hint) from err
    if kind == "linear":
        schedule = NoiseSchedule.linear(T, start, end)
    elif kind == "quad":
        schedule = NoiseSchedule.from_betas(torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2)
    elif kind == "const":
        schedule = NoiseSchedule.from_betas(torch.full((T,), end, dtype=torch.float64))
    else:
        raise CorruptFileError(
            source, f"beta_schedule {kind!r} is not supported; valid: 'linear', 'quad', 'const'", hint
        )
    if arch["out_ch"] != arch["in_channels"]:
        raise CorruptFileError(
            source, f"model.out_ch={arch['out_ch']} != in_channels={arch['in_channels']}: not an eps model", hint
        )
    return DDIMArch(**arch, schedule=schedule)


#: improved-diffusion ``script_util.create_model`` and guided-diffusion ``create_model`` channel multipliers.
_OPENAI_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}
_GUIDED_ONLY = ("num_head_channels", "resblock_updown", "use_new_attention_order", "use_fp16")


@dataclass(frozen=True)
class OpenAIArch:
    """improved/guided-diffusion ``UNetModel`` hyper-parameters and the diffusion's schedule settings."""

    codebase: str
    image_size: int
    in_channels: int
    model_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    dropout: float
    channel_mult: tuple[float, ...]
    conv_resample: bool
    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    use_new_attention_order: bool
    learn_sigma: bool
    rescale_timesteps: bool
    schedule: NoiseSchedule = field(repr=False)

    def channels(self) -> list[int]:
        return [int(m * self.model_channels) for m in self.channel_mult]

    def heads(self, channels: int, upsample: bool) -> int:
        """Heads of an attention module with ``channels`` channels (``AttentionBlock`` of each codebase)."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        return self.num_heads_upsample if upsample else self.num_heads

    def unet_config(self) -> dict[str, Any]:
        """``UNet2DModel`` keyword arguments describing the same network (eps channels only)."""
        levels = len(self.channel_mult)
        attn = [2**i in self.attention_ds for i in range(levels)]
        plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if self.resblock_updown else (
            "DownBlock2D", "UpBlock2D")  # fmt: skip
        return {
            "sample_size": self.image_size,
            "in_channels": self.in_channels,
            "out_channels": self.in_channels,
            "time_embedding_type": "positional",
            "flip_sin_to_cos": True,  # OpenAI: [cos, sin]
            "freq_shift": 0,  # OpenAI: log(10000) / half
            "block_out_channels": self.channels(),
            "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
            "layers_per_block": self.num_res_blocks,
            "downsample_padding": 1,
            "downsample_type": "resnet" if self.resblock_updown else "conv",
            "upsample_type": "resnet" if self.resblock_updown else "conv",
            "dropout": self.dropout,
            "act_fn": "silu",
            "attention_head_dim": self.num_head_channels if self.num_head_channels != -1 else None,
            "norm_num_groups": 32,
            "attn_norm_num_groups": 32,  # the mid block drops its attention norm under scale_shift unless given
            "norm_eps": 1e-5,  # GroupNorm32's default
            "resnet_time_scale_shift": "scale_shift" if self.use_scale_shift_norm else "default",
            "add_attention": True,
        }


def openai_arch(flags: Mapping[str, Any], source: str | os.PathLike[str] = "flags") -> OpenAIArch:
    """Architecture and schedule from improved/guided-diffusion flags (see :func:`read_openai_flags`).

    Missing flags take the codebase's ``model_and_diffusion_defaults()``. The codebase is ``flags["codebase"]``
    (``"improved-diffusion"`` / ``"guided-diffusion"``) when given, else guided-diffusion when a guided-only flag
    (``num_head_channels``, ``resblock_updown``, ``use_new_attention_order``, ``use_fp16``) is present, else
    improved-diffusion. It matters for the defaults of ``rescale_timesteps`` (improved: True;
    guided: False) and ``use_scale_shift_norm`` (both True). ``channel_mult`` (a ``"1,2,2"`` string) is accepted
    for both.

    Raises:
        CorruptFileError: on a class-conditional or x0-predicting model, an unknown image size without
            ``channel_mult``, or a first channel multiplier other than 1.
    """
    hint = "write the flags the model was trained with (the README's MODEL_FLAGS and DIFFUSION_FLAGS)"
    codebase = str(flags.get("codebase") or ("guided-diffusion" if any(k in flags for k in _GUIDED_ONLY) else
                                             "improved-diffusion"))  # fmt: skip
    if codebase not in ("improved-diffusion", "guided-diffusion"):
        raise CorruptFileError(source, f"codebase {codebase!r}; valid: 'improved-diffusion', 'guided-diffusion'", hint)
    f: dict[str, Any] = {
        "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
        "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
        "learn_sigma": False, "class_cond": False, "use_scale_shift_norm": True, "resblock_updown": False,
        "use_new_attention_order": False, "diffusion_steps": 1000, "noise_schedule": "linear",
        "predict_xstart": False, "rescale_timesteps": codebase == "improved-diffusion", "in_channels": 3,
        "conv_resample": True,
    }  # fmt: skip
    f.update(flags)
    if f["class_cond"]:
        raise CorruptFileError(source, "class_cond=True: class-conditional models need class labels the env does not "
                               "pass; use an unconditional checkpoint", hint)  # fmt: skip
    if f["predict_xstart"]:
        raise CorruptFileError(source, "predict_xstart=True: only epsilon-prediction models are supported", hint)
    size = int(f["image_size"])
    if f["channel_mult"]:
        mult = tuple(float(m) for m in str(f["channel_mult"]).replace("(", "").replace(")", "").split(",") if m.strip())
    elif size in _OPENAI_CHANNEL_MULT:
        mult = _OPENAI_CHANNEL_MULT[size]
    else:
        raise CorruptFileError(source, f"image_size {size} has no default channel_mult; give channel_mult", hint)
    if mult[0] != 1:
        raise CorruptFileError(source, f"channel_mult {mult} starts with {mult[0]}: its time embedding width "
                               "differs from the first block's and has no UNet2DModel equivalent", hint)  # fmt: skip
    res = f["attention_resolutions"]
    res_list = [int(r) for r in str(res).split(",") if str(r).strip()] if not isinstance(res, (list, tuple)) else res
    T = int(f["diffusion_steps"])
    kind = str(f["noise_schedule"])
    if kind == "linear":  # get_named_beta_schedule: scaled so that any T matches the T = 1000 schedule
        scale = 1000 / T
        schedule = NoiseSchedule.linear(T, scale * 1e-4, scale * 0.02)
    elif kind == "cosine":
        schedule = NoiseSchedule.cosine(T)
    else:
        raise CorruptFileError(source, f"noise_schedule {kind!r}; valid: 'linear', 'cosine'", hint)
    heads_up = int(f["num_heads_upsample"])
    return OpenAIArch(
        codebase=codebase,
        image_size=size,
        in_channels=int(f["in_channels"]),
        model_channels=int(f["num_channels"]),
        num_res_blocks=int(f["num_res_blocks"]),
        attention_ds=tuple(size // int(r) for r in res_list),
        dropout=float(f["dropout"]),
        channel_mult=mult,
        conv_resample=bool(f["conv_resample"]),
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f["num_head_channels"]),
        num_heads_upsample=int(f["num_heads"]) if heads_up == -1 else heads_up,
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f["resblock_updown"]),
        use_new_attention_order=bool(f["use_new_attention_order"]),
        learn_sigma=bool(f["learn_sigma"]),
        rescale_timesteps=bool(f["rescale_timesteps"]),
        schedule=schedule,
    )


# ----------------------------------------------------------------------------------------------- state dicts
class _Mapper:
    """Copies source tensors to target names, remembering which source keys were used."""

    def __init__(self, src: Mapping[str, torch.Tensor]) -> None:
        self.src = src
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise KeyError(key)
        self.used.add(key)
        return self.src[key].float()

    def copy(self, s: str, d: str, reshape_linear: bool = False) -> None:
        w = self.take(f"{s}.weight")
        self.out[f"{d}.weight"] = w.reshape(w.shape[0], -1) if reshape_linear else w
        self.out[f"{d}.bias"] = self.take(f"{s}.bias")

    def has(self, prefix: str) -> bool:
        return f"{prefix}.weight" in self.src

    def unused(self) -> list[str]:
        return sorted(set(self.src) - self.used)


def _avg_kernel(channels: int, rows: slice) -> dict[str, torch.Tensor]:
    """A 3x3 stride-2 conv equal to 2x2 average pooling (for models that resample without convolution)."""
    w = torch.zeros(channels, channels, 3, 3)
    idx = torch.arange(channels)
    w[idx, idx, rows, rows] = 0.25
    return {"weight": w, "bias": torch.zeros(channels)}


def _identity_kernel(channels: int) -> dict[str, torch.Tensor]:
    w = torch.zeros(channels, channels, 3, 3)
    idx = torch.arange(channels)
    w[idx, idx, 1, 1] = 1.0
    return {"weight": w, "bias": torch.zeros(channels)}


def _set(m: _Mapper, d: str, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        m.out[f"{d}.{name}"] = t


def _ddim_resnet(m: _Mapper, s: str, d: str) -> None:
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2"),
                 ("conv2", "conv2")):  # fmt: skip
        m.copy(f"{s}.{a}", f"{d}.{b}")
    if m.has(f"{s}.nin_shortcut"):
        m.copy(f"{s}.nin_shortcut", f"{d}.conv_shortcut")
    elif m.has(f"{s}.conv_shortcut"):
        raise ValueError(f"{s}.conv_shortcut is a 3x3 shortcut, which UNet2DModel does not have")


def _ddim_attn(m: _Mapper, s: str, d: str) -> None:
    m.copy(f"{s}.norm", f"{d}.group_norm")
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        m.copy(f"{s}.{a}", f"{d}.{b}", reshape_linear=True)


def convert_ddim_state_dict(
    sd: Mapping[str, torch.Tensor], arch: DDIMArch
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an ermongroup/ddim ``Model`` state dict to ``UNet2DModel(**arch.unet_config())``'s.

    Returns:
        The converted state dict and the source keys it did not use (``logvar`` of ``type: bayesian``).

    Raises:
        KeyError: naming the first expected source tensor that is missing.
    """
    m = _Mapper(sd)
    m.copy("temb.dense.0", "time_embedding.linear_1")
    m.copy("temb.dense.1", "time_embedding.linear_2")
    m.copy("conv_in", "conv_in")
    levels = len(arch.ch_mult)
    for lvl in range(levels):
        attn = arch.resolution // 2**lvl in arch.attn_resolutions
        for i in range(arch.num_res_blocks):
            _ddim_resnet(m, f"down.{lvl}.block.{i}", f"down_blocks.{lvl}.resnets.{i}")
            if attn:
                _ddim_attn(m, f"down.{lvl}.attn.{i}", f"down_blocks.{lvl}.attentions.{i}")
        if lvl != levels - 1:
            d = f"down_blocks.{lvl}.downsamplers.0.conv"
            if arch.resamp_with_conv:
                m.copy(f"down.{lvl}.downsample.conv", d)
            else:
                _set(m, d, _avg_kernel(arch.ch * arch.ch_mult[lvl], slice(0, 2)))
    _ddim_resnet(m, "mid.block_1", "mid_block.resnets.0")
    _ddim_attn(m, "mid.attn_1", "mid_block.attentions.0")
    _ddim_resnet(m, "mid.block_2", "mid_block.resnets.1")
    for lvl in range(levels):
        j = levels - 1 - lvl  # diffusers counts up blocks from the lowest resolution
        attn = arch.resolution // 2**lvl in arch.attn_resolutions
        for i in range(arch.num_res_blocks + 1):
            _ddim_resnet(m, f"up.{lvl}.block.{i}", f"up_blocks.{j}.resnets.{i}")
            if attn:
                _ddim_attn(m, f"up.{lvl}.attn.{i}", f"up_blocks.{j}.attentions.{i}")
        if lvl != 0:
            d = f"up_blocks.{j}.upsamplers.0.conv"
            if arch.resamp_with_conv:
                m.copy(f"up.{lvl}.upsample.conv", d)
            else:
                _set(m, d, _identity_kernel(arch.ch * arch.ch_mult[lvl]))
    m.copy("norm_out", "conv_norm_out")
    m.copy("conv_out", "conv_out")
    return m.out, m.unused()


def _openai_resblock(m: _Mapper, s: str, d: str) -> None:
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2")):  # fmt: skip
        m.copy(f"{s}.{a}", f"{d}.{b}")
    if m.has(f"{s}.skip_connection"):
        if m.src[f"{s}.skip_connection.weight"].shape[-1] != 1:
            raise ValueError(f"{s}.skip_connection is a 3x3 shortcut, which UNet2DModel does not have")
        m.copy(f"{s}.skip_connection", f"{d}.conv_shortcut")


def _openai_attn(m: _Mapper, s: str, d: str, heads: int, new_order: bool) -> None:
    m.copy(f"{s}.norm", f"{d}.group_norm")
    w, b = m.take(f"{s}.qkv.weight"), m.take(f"{s}.qkv.bias")
    c = w.shape[1]
    w, b = w.reshape(3 * c, c), b.reshape(3 * c)
    # legacy order (QKVAttentionLegacy): rows [head][q|k|v][dim]; new order (QKVAttention): rows [q|k|v][head][dim]
    shape = (3, heads, c // heads) if new_order else (heads, 3, c // heads)
    w, b = w.reshape(*shape, c), b.reshape(*shape)
    for idx, name in enumerate(("to_q", "to_k", "to_v")):
        part_w = w[idx] if new_order else w[:, idx]
        part_b = b[idx] if new_order else b[:, idx]
        m.out[f"{d}.{name}.weight"] = part_w.reshape(c, c)
        m.out[f"{d}.{name}.bias"] = part_b.reshape(c)
    m.copy(f"{s}.proj_out", f"{d}.to_out.0", reshape_linear=True)


def convert_openai_state_dict(
    sd: Mapping[str, torch.Tensor], arch: OpenAIArch
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an improved/guided-diffusion ``UNetModel`` state dict to ``UNet2DModel(**arch.unet_config())``'s.

    ``input_blocks`` / ``output_blocks`` are flat lists in the original (one entry per resnet, plus one per
    down-sampler); they are walked in the order ``UNetModel.__init__`` builds them. With ``learn_sigma`` only the
    first ``in_channels`` output channels (eps) of ``out.2`` are kept.

    Returns:
        The converted state dict and the unused source keys.

    Raises:
        KeyError: naming the first expected source tensor that is missing.
    """
    m = _Mapper(sd)
    m.copy("time_embed.0", "time_embedding.linear_1")
    m.copy("time_embed.2", "time_embedding.linear_2")
    m.copy("input_blocks.0.0", "conv_in")
    chans = arch.channels()
    levels = len(chans)
    k = 1
    for lvl in range(levels):
        attn = 2**lvl in arch.attention_ds
        for i in range(arch.num_res_blocks):
            _openai_resblock(m, f"input_blocks.{k}.0", f"down_blocks.{lvl}.resnets.{i}")
            if attn:
                _openai_attn(m, f"input_blocks.{k}.1", f"down_blocks.{lvl}.attentions.{i}",
                             arch.heads(chans[lvl], upsample=False), arch.use_new_attention_order)  # fmt: skip
            k += 1
        if lvl != levels - 1:
            d = f"down_blocks.{lvl}.downsamplers.0"
            if arch.resblock_updown:
                _openai_resblock(m, f"input_blocks.{k}.0", d)
            elif arch.conv_resample:
                m.copy(f"input_blocks.{k}.0.op", f"{d}.conv")
            else:
                _set(m, f"{d}.conv", _avg_kernel(chans[lvl], slice(1, 3)))
            k += 1
    _openai_resblock(m, "middle_block.0", "mid_block.resnets.0")
    _openai_attn(m, "middle_block.1", "mid_block.attentions.0", arch.heads(chans[-1], upsample=False),
                 arch.use_new_attention_order)  # fmt: skip
    _openai_resblock(m, "middle_block.2", "mid_block.resnets.1")
    k = 0
    for j in range(levels):
        lvl = levels - 1 - j
        attn = 2**lvl in arch.attention_ds
        for i in range(arch.num_res_blocks + 1):
            s = f"output_blocks.{k}"
            _openai_resblock(m, f"{s}.0", f"up_blocks.{j}.resnets.{i}")
            if attn:
                _openai_attn(m, f"{s}.1", f"up_blocks.{j}.attentions.{i}", arch.heads(chans[lvl], upsample=True),
                             arch.use_new_attention_order)  # fmt: skip
            if lvl != 0 and i == arch.num_res_blocks:
                u = f"{s}.{2 if attn else 1}"
                d = f"up_blocks.{j}.upsamplers.0"
                if arch.resblock_updown:
                    _openai_resblock(m, u, d)
                elif arch.conv_resample:
                    m.copy(f"{u}.conv", f"{d}.conv")
                else:
                    _set(m, f"{d}.conv", _identity_kernel(chans[lvl]))
            k += 1
    m.copy("out.0", "conv_norm_out")
    w, b = m.take("out.2.weight"), m.take("out.2.bias")
    n_out = w.shape[0]
    expected = 2 * arch.in_channels if arch.learn_sigma else arch.in_channels
    if n_out != expected:
        raise ValueError(
            f"out.2 has {n_out} output channels but the flags say learn_sigma={arch.learn_sigma} "
            f"({expected} channels); fix learn_sigma in the flags"
        )
    m.out["conv_out.weight"], m.out["conv_out.bias"] = w[: arch.in_channels], b[: arch.in_channels]
    return m.out, m.unused()


# ----------------------------------------------------------------------------------------------- whole checkpoints
def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _ddim_weights(obj: Any, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The model's state dict (EMA weights overlaid when wanted and present) and a note saying which."""
    ema: Any = None
    if isinstance(obj, (list, tuple)):
        if not obj or not _is_tensor_dict(obj[0]):
            raise ValueError("a list checkpoint must start with the model's state dict (ermongroup/ddim runner format)")
        base = obj[0]
        if len(obj) >= 5 and _is_tensor_dict(obj[-1]):
            ema = obj[-1]
    elif _is_tensor_dict(obj):
        base = obj
    elif isinstance(obj, Mapping) and _is_tensor_dict(obj.get("state_dict") or obj.get("model")):
        base = obj.get("state_dict") or obj.get("model")
        ema = obj.get("ema") if _is_tensor_dict(obj.get("ema")) else None
    else:
        raise ValueError(f"unrecognised checkpoint structure ({type(obj).__name__}); expected a state dict or "
                         "the list [model, optimizer, epoch, step, ema] ermongroup/ddim saves")  # fmt: skip
    sd = _strip_prefix(base)
    if use_ema and ema is not None:
        shadow = _strip_prefix(ema)
        unknown = set(shadow) - set(sd)
        if unknown:
            raise ValueError(f"the EMA entry names parameters the model lacks: {sorted(unknown)[:3]}")
        sd.update(shadow)
        return sd, f"EMA weights ({len(shadow)} tensors from the last checkpoint entry)"
    if use_ema:
        return sd, "raw weights (the config asks for EMA but the checkpoint holds no EMA entry)"
    return sd, "raw weights (config model.ema is false)"


def detect_format(sd_or_obj: Any) -> CheckpointFormat | None:
    """``"ddim"`` or ``"openai"`` from the tensor names, or None when neither matches."""
    obj = sd_or_obj[0] if isinstance(sd_or_obj, (list, tuple)) and sd_or_obj else sd_or_obj
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        obj = obj.get("state_dict") or obj.get("model") or {}
    keys = {
        k[len("module.") :] if k.startswith("module.") else k for k in (obj.keys() if isinstance(obj, Mapping) else [])
    }
    if "temb.dense.0.weight" in keys and "conv_in.weight" in keys:
        return "ddim"
    if "input_blocks.0.0.weight" in keys and "time_embed.0.weight" in keys:
        return "openai"
    return None


def find_config(checkpoint: Path, fmt: CheckpointFormat) -> Path:
    """The config / flags file next to ``checkpoint`` (names in :data:`CONFIG_NAMES`, first found wins).

    Raises:
        FileNotFoundError: naming every file looked for and where the original ones come from.
    """
    names = [n.format(stem=checkpoint.stem) for n in CONFIG_NAMES[fmt]]
    for name in names:
        cand = checkpoint.parent / name
        if cand.is_file() and cand != checkpoint:
            return cand
    where = ("the YAML config the model was trained with (ermongroup/ddim configs/celeba.yml for the CelebA 64x64 "
             "release)" if fmt == "ddim" else "the model flags of the release (a JSON object, or the README's "
             "MODEL_FLAGS/DIFFUSION_FLAGS line in a text file)")  # fmt: skip
    raise FileNotFoundError(
        f"{checkpoint} is an {fmt} checkpoint but no config is next to it; looked for "
        + ", ".join(str(checkpoint.parent / n) for n in names)
        + f". Put {where} there under one of these names."
    )


def _build_unet(
    config: dict[str, Any], sd: dict[str, torch.Tensor], unused: list[str], ckpt: Path, cfg_path: Path
) -> nn.Module:
    from robust_envs.diffusion.models import unet2d_class

    UNet2DModel = unet2d_class()
    allowed_unused = {"logvar"}
    extra = [k for k in unused if k not in allowed_unused]
    if extra:
        raise ValueError(f"{ckpt} holds tensors the config {cfg_path} does not describe (first: {extra[:5]}); "
                         "is it the matching config?")  # fmt: skip
    unet: Any = UNet2DModel(**config)
    try:
        unet.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ValueError(f"the weights in {ckpt} do not fit the architecture of {cfg_path}: "
                         + " ".join(lines[:4])[:600]) from err  # fmt: skip
    return unet


def _patch_openai(unet: nn.Module, arch: OpenAIArch) -> list[str]:
    """Set what ``UNet2DModel``'s config cannot hold: per-module heads, the timestep scale. Returns notes."""
    notes: list[str] = []
    patched = 0
    for name, mod in unet.named_modules():
        if mod.__class__.__name__ != "Attention" or not hasattr(mod, "to_q"):
            continue
        channels = mod.to_q.out_features
        heads = arch.heads(channels, upsample=name.startswith("up_blocks"))
        if channels % heads:
            raise ValueError(f"attention {name} has {channels} channels, not divisible by {heads} heads")
        if mod.heads != heads:
            mod.heads = heads
            mod.scale = (channels // heads) ** -0.5
            patched += 1
    if patched:
        notes.append(f"heads set per attention module ({patched} modules; num_heads={arch.num_heads}, "
                     f"num_heads_upsample={arch.num_heads_upsample})")  # fmt: skip
    T = arch.schedule.num_train_timesteps
    if arch.rescale_timesteps and T != 1000:
        time_proj: Any = unet.time_proj
        time_proj.scale = 1000.0 / T
        notes.append(f"rescale_timesteps: the network sees t * 1000 / {T} (time_proj.scale)")
    return notes


def load_checkpoint(
    path: str | os.PathLike[str],
    config: str | os.PathLike[str] | None = None,
    use_ema: bool | None = None,
) -> ConvertedCheckpoint:
    """Load an ermongroup/ddim or improved/guided-diffusion checkpoint as a ``UNet2DModel`` with its schedule.

    Args:
        path: the weights file (``.pth``, ``.pt``, ``.ckpt``, ``.bin`` or ``.safetensors``), or a folder holding
            exactly one such file (ermongroup/ddim's ``logs/<doc>/`` folder with ``ckpt.pth`` and ``config.yml``).
        config: the config (DDIM YAML) or flags (JSON / flag text); default: found next to the checkpoint
            (:data:`CONFIG_NAMES`).
        use_ema: DDIM only: use the EMA entry (default: the config's ``model.ema``).

    Returns:
        :class:`ConvertedCheckpoint` on the CPU in float32.

    Raises:
        FileNotFoundError: if the checkpoint or its config is missing (the message lists the names tried).
        CorruptFileError: if the checkpoint or the config is truncated or malformed (the message names the file).
        ValueError: if the format is not recognised, or the weights do not fit the config.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in CHECKPOINT_SUFFIXES and f.is_file())
        if len(files) != 1:
            raise FileNotFoundError(f"{p} must hold exactly one checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}); "
                                    f"found {[f.name for f in files]}. Pass the file itself.")  # fmt: skip
        p = files[0]
    obj = read_state_dict(p)
    fmt = detect_format(obj)
    if fmt is None:
        keys = sorted(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{p} is neither an ermongroup/ddim checkpoint (temb.dense.*, down.*) nor an improved/guided-diffusion one "
            f"(input_blocks.*, time_embed.*); first keys: {keys}. A diffusers UNet2DModel needs its folder with "
            "config.json."
        )
    cfg_path = Path(config).expanduser() if config is not None else find_config(p, fmt)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config {cfg_path} for checkpoint {p} does not exist")
    notes: list[str] = []
    try:
        if fmt == "ddim":
            d_arch = ddim_arch(read_ddim_config(cfg_path), cfg_path)
            sd, note = _ddim_weights(obj, d_arch.ema if use_ema is None else use_ema)
            notes.append(note)
            converted, unused = convert_ddim_state_dict(sd, d_arch)
            unet = _build_unet(d_arch.unet_config(), converted, unused, p, cfg_path)
            schedule = d_arch.schedule
        else:
            o_arch = openai_arch(read_openai_flags(cfg_path), cfg_path)
            sd = _strip_prefix(obj if _is_tensor_dict(obj) else obj.get("state_dict") or obj.get("model"))
            converted, unused = convert_openai_state_dict(sd, o_arch)
            if o_arch.learn_sigma:
                notes.append("learn_sigma: kept the eps output channels, dropped the variance channels")
            unet = _build_unet(o_arch.unet_config(), converted, unused, p, cfg_path)
            notes += _patch_openai(unet, o_arch)
            schedule = o_arch.schedule
    except KeyError as err:
        raise ValueError(f"{p} lacks tensor {err.args[0]!r} that the config {cfg_path} implies; is it the "
                         "matching config (channel multipliers, resolutions with attention, res blocks)?") from err  # fmt: skip
    unet = unet.eval().requires_grad_(False)
    return ConvertedCheckpoint(unet=unet, schedule=schedule, format=fmt, checkpoint=p, config=cfg_path,
                               notes=tuple(notes))  # fmt: skip
