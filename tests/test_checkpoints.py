"""Original DDIM and improved/guided-diffusion checkpoints load through ``gym.make("DDIMSigma-v0", model=PATH)``.

Each format: a random-weight model of the original architecture (tests/_reference_unets.py, a re-implementation
written from the original code, with the original tensor names) is saved as the original code saves it, loaded
by the env, and the env's network output is matched against the reference forward within 1e-5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml

import robust_envs  # noqa: F401
from robust_envs.diffusion import NoiseSchedule, load_noise_model
from robust_envs.diffusion.checkpoints import load_checkpoint, openai_arch, read_openai_flags
from robust_envs.fileio import CorruptFileError
from tests._reference_unets import DDIMModel, OpenAIUNet, randomize_

TOL = 1e-5
DDIM_CFG = {
    "data": {"dataset": "CELEBA", "image_size": 16, "channels": 3, "rescaled": True},
    "model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
              "attn_resolutions": [8], "dropout": 0.1, "var_type": "fixedlarge", "ema_rate": 0.9999, "ema": True,
              "resamp_with_conv": True},
    "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_diffusion_timesteps": 1000},
}  # fmt: skip


def _ddim_reference(cfg: dict, seed: int) -> DDIMModel:
    m = cfg["model"]
    return randomize_(DDIMModel(ch=m["ch"], out_ch=m["out_ch"], ch_mult=m["ch_mult"], num_res_blocks=m["num_res_blocks"],
                                attn_resolutions=m["attn_resolutions"], dropout=m["dropout"],
                                in_channels=m["in_channels"], resolution=cfg["data"]["image_size"],
                                resamp_with_conv=m["resamp_with_conv"]), seed=seed)  # fmt: skip


def _namespace(d: dict) -> argparse.Namespace:
    return argparse.Namespace(**{k: _namespace(v) if isinstance(v, dict) else v for k, v in d.items()})


def _save_ddim_run(folder: Path, cfg: dict) -> tuple[DDIMModel, DDIMModel]:
    """Save as ermongroup/ddim's runner does: ``[model, optimizer, epoch, step, ema]`` of a DataParallel model
    (``module.`` names) and the run's ``config.yml`` (a yaml dump of the config Namespace)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, ema = _ddim_reference(cfg, seed=1), _ddim_reference(cfg, seed=2)
    prefixed = {f"module.{k}": v for k, v in raw.state_dict().items()}
    shadow = {f"module.{k}": v for k, v in ema.state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(prefixed)))}]}
    torch.save([prefixed, optimizer, 3, 1234, shadow], folder / "ckpt.pth")
    (folder / "config.yml").write_text(yaml.dump(_namespace(cfg), default_flow_style=False))
    return raw, ema


def _net(env: gym.Env):
    return env.unwrapped.sim.model


def _inputs(shape: tuple[int, int, int], n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.tensor([0.0, 17.3, 999.0])[:n]


def test_ddim_runner_checkpoint_loads_in_env_with_ema_and_matches_reference(tmp_path, contrast_evaluator) -> None:
    raw, ema = _save_ddim_run(tmp_path / "logs" / "celeba", DDIM_CFG)
    assert "!!python/object:argparse.Namespace" in (tmp_path / "logs" / "celeba" / "config.yml").read_text()
    env = gym.make("DDIMSigma-v0", model=str(tmp_path / "logs" / "celeba" / "ckpt.pth"), evaluator=contrast_evaluator,
                   t_c=2, stride=500, device="cpu")  # fmt: skip
    model = _net(env)
    assert model.sample_shape == (3, 16, 16)
    x, t = _inputs(model.sample_shape)
    with torch.no_grad():
        out, ref_ema, ref_raw = model(x, t), ema(x, t), raw(x, t)
    assert (out - ref_ema).abs().max().item() < TOL  # EMA weights, as ermongroup/ddim samples
    assert (out - ref_raw).abs().max().item() > 1e-2
    expected = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert torch.equal(model.schedule.alpha_bar, expected.alpha_bar)
    obs, _ = env.reset(seed=0)
    assert obs["x_t"].shape == (3, 16, 16)
    env.step(env.action_space.sample())
    env.close()


def test_ddim_log_folder_and_raw_weights(tmp_path) -> None:
    cfg = json.loads(json.dumps(DDIM_CFG))
    cfg["model"].update(ema=False, resamp_with_conv=False, attn_resolutions=[16])
    cfg["diffusion"].update(beta_schedule="quad", num_diffusion_timesteps=500)
    raw, _ = _save_ddim_run(tmp_path, cfg)
    model = load_noise_model(tmp_path)  # the folder: ckpt.pth + config.yml
    x, t = _inputs((3, 16, 16))
    with torch.no_grad():
        assert (model(x, t) - raw(x, t)).abs().max().item() < TOL
    assert model.schedule.num_train_timesteps == 500
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 500, dtype=torch.float64) ** 2
    assert torch.allclose(model.schedule.betas, betas)


def _openai_reference(flags: dict, seed: int = 0) -> OpenAIUNet:
    arch = openai_arch(flags)
    return randomize_(OpenAIUNet(in_channels=3, model_channels=arch.model_channels,
                                 out_channels=6 if arch.learn_sigma else 3, num_res_blocks=arch.num_res_blocks,
                                 attention_resolutions=arch.attention_ds, channel_mult=arch.channel_mult,
                                 conv_resample=arch.conv_resample, num_heads=arch.num_heads,
                                 num_head_channels=arch.num_head_channels, num_heads_upsample=arch.num_heads_upsample,
                                 use_scale_shift_norm=arch.use_scale_shift_norm, resblock_updown=arch.resblock_updown,
                                 use_new_attention_order=arch.use_new_attention_order), seed=seed)  # fmt: skip


def test_improved_diffusion_checkpoint_with_readme_flags(tmp_path, contrast_evaluator) -> None:
    """improved-diffusion: learn_sigma (eps channels kept), 2 heads, cosine schedule, T = 4000 with
    rescale_timesteps (the network sees t * 1000 / T), flags as the README's shell lines."""
    (tmp_path / "flags.txt").write_text(
        'MODEL_FLAGS="--image_size 16 --num_channels 32 --num_res_blocks 1 --learn_sigma True --num_heads 2 '
        '--attention_resolutions 8 --channel_mult 1,2"\n'
        'DIFFUSION_FLAGS="--diffusion_steps 4000 --noise_schedule cosine"\n'
    )
    flags = read_openai_flags(tmp_path / "flags.txt")
    assert flags["learn_sigma"] is True and flags["diffusion_steps"] == 4000
    ref = _openai_reference({k: v for k, v in flags.items()})
    torch.save(ref.state_dict(), tmp_path / "imagenet64_uncond.pt")
    env = gym.make("DDIMSigma-v0", model=str(tmp_path / "imagenet64_uncond.pt"), evaluator=contrast_evaluator, t_c=2,
                   stride=2000, device="cpu")  # fmt: skip
    model = _net(env)
    x, t = _inputs(model.sample_shape)
    with torch.no_grad():
        err = (model(x, t) - ref(x, t * 1000.0 / 4000.0)[:, :3]).abs().max().item()
    assert err < TOL
    assert torch.allclose(model.schedule.alpha_bar, NoiseSchedule.cosine(4000).alpha_bar)
    env.reset(seed=0)
    env.close()


def test_guided_diffusion_checkpoint_safetensors_json_flags(tmp_path) -> None:
    """guided-diffusion options: head channels, residual up/down-sampling, the new qkv order, scale-shift norm."""
    from safetensors.torch import save_file

    flags = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "attention_resolutions": "8,16",
             "channel_mult": "1,2", "num_head_channels": 16, "resblock_updown": True, "use_new_attention_order": True,
             "use_scale_shift_norm": True, "learn_sigma": False}  # fmt: skip
    ref = _openai_reference(flags, seed=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(flags))
    model = load_noise_model(tmp_path / "model.safetensors")
    x, t = _inputs((3, 16, 16))
    with torch.no_grad():
        assert (model(x, t) - ref(x, t)).abs().max().item() < TOL
    assert torch.equal(model.schedule.alpha_bar, NoiseSchedule.linear(1000, 1e-4, 0.02).alpha_bar)


def test_cosine_schedule_matches_diffusers_squaredcos() -> None:
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    assert torch.allclose(NoiseSchedule.cosine(1000).alpha_bar[1:], ref, atol=1e-6)
    assert NoiseSchedule.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"}).num_train_timesteps == 1000


# ----------------------------------------------------------------------------------------------- faults
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_pt_checkpoint_names_the_file(tmp_path) -> None:
    _save_ddim_run(tmp_path, DDIM_CFG)
    _truncate(tmp_path / "ckpt.pth")
    with pytest.raises(
        CorruptFileError, match=r"ckpt\.pth.*not a readable torch checkpoint.*download the checkpoint again"
    ):
        load_noise_model(tmp_path / "ckpt.pth")


def test_truncated_safetensors_checkpoint_names_the_file(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "m.safetensors")
    _truncate(tmp_path / "m.safetensors", 0.7)
    with pytest.raises(CorruptFileError, match=r"m\.safetensors.*not a readable safetensors file"):
        load_noise_model(tmp_path / "m.safetensors")


def test_missing_and_wrong_checkpoint_config(tmp_path) -> None:
    _save_ddim_run(tmp_path, DDIM_CFG)
    (tmp_path / "config.yml").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config is next to it.*config\.yml.*configs/celeba\.yml"):
        load_noise_model(tmp_path / "ckpt.pth")
    wrong = json.loads(json.dumps(DDIM_CFG))
    wrong["model"]["ch_mult"] = [1, 2, 2]
    (tmp_path / "config.yml").write_text(yaml.safe_dump(wrong))
    with pytest.raises(ValueError, match=r"ckpt\.pth lacks tensor .*config\.yml"):
        load_noise_model(tmp_path / "ckpt.pth")
    wrong["model"]["ch_mult"] = [1, 4]
    (tmp_path / "config.yml").write_text(yaml.safe_dump(wrong))
    with pytest.raises(ValueError, match=r"do not fit the architecture of .*config\.yml"):
        load_noise_model(tmp_path / "ckpt.pth")
    (tmp_path / "config.yml").write_text("model: [unclosed\n")
    with pytest.raises(CorruptFileError, match=r"config\.yml: not a readable YAML file"):
        load_noise_model(tmp_path / "ckpt.pth")
    (tmp_path / "flags.json").write_text("{}")
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "time_embed.0.weight": torch.zeros(1)}, tmp_path / "x.pt")
    (tmp_path / "flags.json").write_text('{"class_cond": true}')
    with pytest.raises(CorruptFileError, match="class-conditional"):
        load_noise_model(tmp_path / "x.pt")


def test_diffusers_folder_faults_name_the_file(tiny_unet_dir, tmp_path) -> None:
    import shutil

    folder = tmp_path / "unet"
    shutil.copytree(tiny_unet_dir, folder)
    cfg = folder / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match=r"config\.json: invalid or truncated JSON.*save_pretrained"):
        load_noise_model(folder)
    cfg.write_text(json.dumps({**json.loads(text), "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CorruptFileError, match="describes a UNet2DConditionModel"):
        load_noise_model(folder)
    cfg.write_text(json.dumps({**json.loads(text), "block_out_channels": [16, 32]}))
    with pytest.raises(
        ValueError, match=r"weights diffusion_pytorch_model\.safetensors and .*config\.json do not agree"
    ):
        load_noise_model(folder)
    cfg.unlink()
    with pytest.raises(FileNotFoundError, match=r"holds weights .* no config\.json"):
        load_noise_model(folder)
    shutil.copy(tiny_unet_dir / "config.json", cfg)
    _truncate(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CorruptFileError, match=r"diffusion_pytorch_model\.safetensors: not a readable safetensors"):
        load_noise_model(folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        (tiny_unet_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    _truncate(folder / "scheduler_config.json")
    with pytest.raises(CorruptFileError, match=r"scheduler_config\.json"):
        load_noise_model(folder)


def test_load_checkpoint_reports_notes(tmp_path) -> None:
    _save_ddim_run(tmp_path, DDIM_CFG)
    conv = load_checkpoint(tmp_path / "ckpt.pth")
    assert conv.format == "ddim" and conv.config.name == "config.yml"
    assert any("EMA" in n for n in conv.notes)


@pytest.mark.slow
def test_full_size_celeba64_architecture_converts(tmp_path) -> None:
    """The CelebA 64x64 release's exact config (ermongroup/ddim configs/celeba.yml: ch 128, ch_mult 1,2,2,2,4,
    two res blocks, attention at 16), random weights, one 64x64 sample."""
    cfg = json.loads(json.dumps(DDIM_CFG))
    cfg["data"]["image_size"] = 64
    cfg["model"].update(ch=128, ch_mult=[1, 2, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16])
    raw, ema = _save_ddim_run(tmp_path, cfg)
    model = load_noise_model(tmp_path / "ckpt.pth")
    assert sum(p.numel() for p in model.unet.parameters()) == sum(p.numel() for p in ema.parameters())
    x, t = _inputs((3, 64, 64), n=2)
    with torch.no_grad():
        assert (model(x, t) - ema(x, t)).abs().max().item() < TOL
