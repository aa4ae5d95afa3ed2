"""Reference forwards of the original noise networks, written for the tests from reading the originals.

- :class:`DDIMModel`: ermongroup/ddim ``models/diffusion.py`` ``Model`` (the CelebA 64x64 DDIM of seed 000).
- :class:`OpenAIUNet`: openai/guided-diffusion ``guided_diffusion/unet.py`` ``UNetModel``; with
  ``num_head_channels=-1``, ``resblock_updown=False`` and ``use_new_attention_order=False`` it is
  openai/improved-diffusion's ``UNetModel``.

Module names and nesting follow the originals so that ``state_dict()`` has the originals' tensor names: a
checkpoint saved from these classes is in the original format. The forward passes follow the originals step by
step (the convolutions, norms, embeddings, attention reshapes and skip order); only training-time machinery
(gradient checkpointing, fp16 conversion, class conditioning) is left out. Nothing here is imported by the
library: it is the independent side of the conversion tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------- ermongroup/ddim
def ddim_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1))).to(t.device)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 else emb


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _ddim_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class _DDIMUp(nn.Module):
    def __init__(self, c: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _DDIMDown(nn.Module):
    def __init__(self, c: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class _DDIMRes(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.norm1 = _ddim_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = _ddim_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.cin != self.cout:
            x = self.nin_shortcut(x)
        return x + h


class _DDIMAttn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _ddim_norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        v = v.reshape(b, c, h * w)
        out = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class DDIMModel(nn.Module):
    """ermongroup/ddim ``Model`` (config fields as keyword arguments)."""

    def __init__(
        self, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
        dropout: float, in_channels: int, resolution: int, resamp_with_conv: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.ch, self.temb_ch = ch, ch * 4
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        curr_res = resolution
        in_ch_mult = (1,) + ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[lvl], ch * ch_mult[lvl]
            for _ in range(num_res_blocks):
                block.append(_DDIMRes(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(_DDIMAttn(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if lvl != self.num_resolutions - 1:
                down.downsample = _DDIMDown(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = _DDIMRes(block_in, block_in, self.temb_ch, dropout)
        self.mid.attn_1 = _DDIMAttn(block_in)
        self.mid.block_2 = _DDIMRes(block_in, block_in, self.temb_ch, dropout)
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = skip_in = ch * ch_mult[lvl]
            for i in range(num_res_blocks + 1):
                if i == num_res_blocks:
                    skip_in = ch * in_ch_mult[lvl]
                block.append(_DDIMRes(block_in + skip_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(_DDIMAttn(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if lvl != 0:
                up.upsample = _DDIMUp(block_in, resamp_with_conv)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = _ddim_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb.dense[1](_swish(self.temb.dense[0](ddim_timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for lvl in range(self.num_resolutions):
            for i in range(self.num_res_blocks):
                h = self.down[lvl].block[i](hs[-1], temb)
                if len(self.down[lvl].attn) > 0:
                    h = self.down[lvl].attn[i](h)
                hs.append(h)
            if lvl != self.num_resolutions - 1:
                hs.append(self.down[lvl].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for lvl in reversed(range(self.num_resolutions)):
            for i in range(self.num_res_blocks + 1):
                h = self.up[lvl].block[i](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[lvl].attn) > 0:
                    h = self.up[lvl].attn[i](h)
            if lvl != 0:
                h = self.up[lvl].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------- OpenAI UNetModel
def openai_timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class _GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(c: int) -> nn.GroupNorm:
    return _GroupNorm32(32, c)


class _Seq(nn.Sequential):
    """TimestepEmbedSequential: passes the embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _ResBlock) else layer(x)
        return x


class _Upsample(nn.Module):
    def __init__(self, c: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class _Downsample(nn.Module):
    def __init__(self, c: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = nn.Conv2d(c, c, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _ResBlock(nn.Module):
    def __init__(self, c: int, emb: int, dropout: float, out: int | None = None, scale_shift: bool = False,
                 up: bool = False, down: bool = False) -> None:  # fmt: skip
        super().__init__()
        out = out or c
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = _Upsample(c, False), _Upsample(c, False)
        elif down:
            self.h_upd, self.x_upd = _Downsample(c, False), _Downsample(c, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(_norm(out), nn.SiLU(), nn.Dropout(p=dropout), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection: nn.Module = nn.Identity() if out == c else nn.Conv2d(c, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class _Attention(nn.Module):
    def __init__(self, c: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else c // num_head_channels
        self.new_order = new_order
        self.norm = _norm(c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def _legacy(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)

    def _new(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", (q * scale).view(bs * self.num_heads, ch, length),
                              (k * scale).view(bs * self.num_heads, ch, length))  # fmt: skip
        weight = torch.softmax(weight.float(), dim=-1)
        return torch.einsum("bts,bcs->bct", weight, v.reshape(bs * self.num_heads, ch, length)).reshape(bs, -1, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self.proj_out(self._new(qkv) if self.new_order else self._legacy(qkv))
        return (x + h).reshape(b, c, *spatial)


class OpenAIUNet(nn.Module):
    """guided-diffusion ``UNetModel`` (improved-diffusion's with the defaults of the guided-only options)."""

    def __init__(
        self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
        attention_resolutions: Sequence[int], dropout: float = 0.0, channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True, num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False, resblock_updown: bool = False, use_new_attention_order: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_Seq(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [
                    _ResBlock(ch, emb, dropout, int(mult * model_channels), use_scale_shift_norm)
                ]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(_Attention(ch, num_heads, num_head_channels, use_new_attention_order))
                self.input_blocks.append(_Seq(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (_ResBlock(ch, emb, dropout, ch, use_scale_shift_norm, down=True) if resblock_updown
                        else _Downsample(ch, conv_resample))  # fmt: skip
                self.input_blocks.append(_Seq(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = _Seq(
            _ResBlock(ch, emb, dropout, scale_shift=use_scale_shift_norm),
            _Attention(ch, num_heads, num_head_channels, use_new_attention_order),
            _ResBlock(ch, emb, dropout, scale_shift=use_scale_shift_norm),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [_ResBlock(ch + chans.pop(), emb, dropout, int(model_channels * mult), use_scale_shift_norm)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(_Attention(ch, num_heads_upsample, num_head_channels, use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(_ResBlock(ch, emb, dropout, ch, use_scale_shift_norm, up=True) if resblock_updown
                                  else _Upsample(ch, conv_resample))  # fmt: skip
                    ds //= 2
                self.output_blocks.append(_Seq(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(int(channel_mult[0] * model_channels), out_channels,
                                                                 3, padding=1))  # fmt: skip

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(openai_timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values (the originals zero-initialise output convs, which would hide mistakes):
    norm scales 1 + N(0, 0.2), biases N(0, 0.2), weights N(0, 1 / fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model.eval()
