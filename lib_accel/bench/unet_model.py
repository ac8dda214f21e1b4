"""An SD1.5-shaped UNet in plain torch (no ldm import), with seeded random weights, for standalone benchmarks.

The layout follows ldm's ``openaimodel.UNetModel`` as SD1.5 configures it: 320 model channels, channel
multipliers (1, 2, 4, 4), two ResBlocks per level, a SpatialTransformer (GroupNorm, 1x1 ``proj_in``/
``proj_out``, one BasicTransformerBlock: self-attention, cross-attention to a 77x768 context, GEGLU
feed-forward) after each ResBlock of the first three levels, 8 heads, a sinusoidal timestep embedding, a
middle block (ResBlock, transformer, ResBlock), an up path that concatenates the down path's skips, and a
3x3 output conv to 4 channels: 859.5M parameters, like SD1.5's ``diffusion_model``.

Every attention call goes through ``UNet.attention`` (``fn(q, k, v) -> out``, all ``(batch, heads, tokens,
head_dim)``), so a benchmark can switch among Accel's kernels without touching the modules. Weights are not
SD's: :func:`init_weights` draws them from a seed, scaled so that activations stay of order 1 (and finite in
fp16 and bf16) through the whole network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention (the default until a kernel is set); softmax in float32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the UNet; :meth:`sd15` is SD1.5's, :meth:`tiny` a few-hundred-kB model for tests."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 8
    context_dim: int = 768
    context_tokens: int = 77
    groups: int = 32

    @classmethod
    def sd15(cls) -> UNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> UNetConfig:
        return cls(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                   num_heads=2, context_dim=32, context_tokens=8, groups=8)

    def as_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ldm's sinusoidal embedding: ``(batch,)`` timesteps -> ``(batch, dim)`` (cos first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """ldm's CrossAttention: q from ``x``, k/v from ``context`` (or ``x``), heads split for the kernel."""

    def __init__(self, dim: int, context_dim: int, heads: int, owner: UNet):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self._owner = [owner]  # a list, so the owner is not registered as a submodule

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, c // h).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], h, c // h).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], h, c // h).transpose(1, 2)
        out = self._owner[0].attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, owner: UNet):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, owner)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, owner)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, dim * 8)  # GEGLU: value and gate, 4x the width each
        self.ff_out = nn.Linear(dim * 4, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        value, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)
        return x + self.ff_out(value * F.gelu(gate))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, context_dim: int, heads: int, groups: int, owner: UNet):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.block = TransformerBlock(channels, context_dim, heads, owner)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        h = self.block(h, context)
        h = h.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """One entry of ldm's ``input_blocks``/``output_blocks``: a ResBlock, transformer or resampler chain."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """``forward(x (b, 4, h, w), timesteps (b,), context (b, tokens, context_dim)) -> (b, 4, h, w)``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.attention: AttentionFn = math_attention
        mc, g = cfg.model_channels, cfg.groups
        emb_dim = mc * 4
        self.time_in = nn.Linear(mc, emb_dim)
        self.time_out = nn.Linear(emb_dim, emb_dim)

        def transformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, cfg.context_dim, cfg.num_heads, g, self)

        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skips, ch = [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, emb_dim, g)]
                ch = mult * mc
                if level in cfg.attention_levels:
                    layers.append(transformer(ch))
                self.input_blocks.append(Stage(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Stage(Downsample(ch)))
                skips.append(ch)
        self.middle_block = Stage(ResBlock(ch, ch, emb_dim, g), transformer(ch), ResBlock(ch, ch, emb_dim, g))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * mc, emb_dim, g)]
                ch = mult * mc
                if level in cfg.attention_levels:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Stage(*layers))
        self.out_norm = nn.GroupNorm(g, ch)
        self.out_conv = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.out_conv.weight.dtype
        t = timestep_embedding(timesteps, self.config.model_channels).to(dtype)
        emb = self.time_out(F.silu(self.time_in(t)))
        h, context = x.to(dtype), context.to(dtype)
        hs = []
        for stage in self.input_blocks:
            h = stage(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out_conv(F.silu(self.out_norm(h)))


# Output layers of residual branches: drawn smaller, as ldm zero-initialises them, so the residual stream
# grows slowly through the 25 blocks instead of doubling at each.
_BRANCH_OUT = ("conv2", "to_out", "ff_out", "proj_out")
_BRANCH_GAIN = 0.3
_BIAS_STD = 0.02


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Deterministic weights from ``seed`` (drawn in float32 on the CPU, so every device and dtype gets the
    same values): weights ~ N(0, 1/fan_in) (residual branch outputs x0.3), biases ~ N(0, 0.02²), norms 1/0."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 2)
        if "norm" in name:
            value = torch.ones(p.shape) if leaf[-1] == "weight" else torch.zeros(p.shape)
        elif leaf[-1] == "bias":
            value = torch.randn(p.shape, generator=gen) * _BIAS_STD
        else:
            fan_in = p[0].numel()
            gain = _BRANCH_GAIN if leaf[-2] in _BRANCH_OUT else 1.0
            value = torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in))
        p.copy_(value)


def build_unet(config: UNetConfig, seed: int = 0, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> UNet:
    """A UNet of ``config`` with :func:`init_weights` values, in eval mode, on ``device`` as ``dtype``.

    Built on the meta device first, so no time is spent on torch's default initialisation."""
    with torch.device("meta"):
        model = UNet(config)
    model.to_empty(device="cpu")
    init_weights(model, seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
