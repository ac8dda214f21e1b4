"""Fake of ldm/modules/diffusionmodules/openaimodel.py: ResBlock, TimestepEmbedSequential and a small
UNetModel.

Same constructor keywords (subset) and the same block layout rules (input/middle/output blocks, attention at
the downsample factors in ``attention_resolutions``, legacy head sizing). Weights are not zero-initialised.
``build_unet`` and ``ResBlockBody`` are shared with the sgm fake, which defines its own classes on top."""

from abc import abstractmethod

import torch as th
import torch.nn.functional as F
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
)
from torch import nn


class TimestepBlock(nn.Module):
    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to `x` given `emb` timestep embeddings."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=1):
        super().__init__()
        self.channels, self.out_channels, self.use_conv, self.dims = (
            channels,
            out_channels or channels,
            use_conv,
            dims,
        )
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=1):
        super().__init__()
        self.channels, self.out_channels, self.use_conv, self.dims = (
            channels,
            out_channels or channels,
            use_conv,
            dims,
        )
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=2, padding=padding)
        else:
            self.op = avg_pool_nd(dims, kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ResBlockBody:
    """__init__ and _forward of the real ResBlock (no up/down variants); mixed into ldm's and sgm's
    ResBlock."""

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_conv=False,
        use_scale_shift_norm=False,
        dims=2,
        use_checkpoint=False,
        up=False,
        down=False,
    ):
        super().__init__()
        self.channels, self.emb_channels, self.dropout = channels, emb_channels, dropout
        self.out_channels = out_channels or channels
        self.use_conv, self.use_checkpoint, self.use_scale_shift_norm = (
            use_conv,
            use_checkpoint,
            use_scale_shift_norm,
        )
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = False
        self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = conv_nd(
                dims, channels, self.out_channels, 3 if use_conv else 1, padding=1 if use_conv else 0
            )

    def _forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while len(emb_out.shape) < len(h.shape):
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            scale, shift = th.chunk(emb_out, 2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class ResBlock(ResBlockBody, TimestepBlock):
    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)


def build_unet(
    self,
    ns,
    image_size,
    in_channels,
    model_channels,
    out_channels,
    num_res_blocks,
    attention_resolutions,
    dropout=0,
    channel_mult=(1, 2, 4, 8),
    conv_resample=True,
    dims=2,
    num_classes=None,
    use_checkpoint=False,
    use_fp16=False,
    num_heads=-1,
    num_head_channels=-1,
    use_scale_shift_norm=False,
    use_spatial_transformer=False,
    transformer_depth=1,
    context_dim=None,
    legacy=True,
    use_linear_in_transformer=False,
    adm_in_channels=None,
    **ignored,
):
    """Fills ``self`` (a UNetModel) using the classes ResBlock/TimestepEmbedSequential/SpatialTransformer of
    ``ns``."""
    assert use_spatial_transformer and context_dim is not None, "the fake UNet needs the spatial transformer"
    assert num_heads != -1 or num_head_channels != -1, "Either num_heads or num_head_channels has to be set"
    self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
    self.out_channels, self.num_res_blocks, self.attention_resolutions = (
        out_channels,
        num_res_blocks,
        attention_resolutions,
    )
    self.channel_mult, self.num_classes, self.use_checkpoint = channel_mult, num_classes, use_checkpoint
    self.dtype = th.float16 if use_fp16 else th.float32
    self.num_heads, self.num_head_channels, self.predict_codebook_ids = num_heads, num_head_channels, False
    time_embed_dim = model_channels * 4
    self.time_embed = nn.Sequential(
        linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
    )
    self.adm_in_channels = adm_in_channels
    if num_classes is not None:  # only the "sequential" kind (SDXL's size/pooled-text vector y)
        assert num_classes == "sequential" and adm_in_channels is not None, "the fake UNet knows only 'sequential'"
        self.label_emb = nn.Sequential(
            nn.Sequential(linear(adm_in_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim))
        )

    def res(ch_in, ch_out):
        return ns.ResBlock(
            ch_in,
            time_embed_dim,
            dropout,
            out_channels=ch_out,
            dims=dims,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
        )

    def attn(ch):
        if num_head_channels == -1:
            heads, dim_head = num_heads, ch // num_heads
        else:
            heads, dim_head = ch // num_head_channels, num_head_channels
        if legacy:
            dim_head = ch // heads
        return ns.SpatialTransformer(
            ch,
            heads,
            dim_head,
            depth=transformer_depth,
            context_dim=context_dim,
            use_linear=use_linear_in_transformer,
            use_checkpoint=use_checkpoint,
        )

    self.input_blocks = nn.ModuleList(
        [ns.TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
    )
    chans, ch, ds = [model_channels], model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res(ch, mult * model_channels)]
            ch = mult * model_channels
            if ds in attention_resolutions:
                layers.append(attn(ch))
            self.input_blocks.append(ns.TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            self.input_blocks.append(
                ns.TimestepEmbedSequential(Downsample(ch, conv_resample, dims, out_channels=ch))
            )
            chans.append(ch)
            ds *= 2
    self.middle_block = ns.TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    self.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            layers = [res(ch + chans.pop(), model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_resolutions:
                layers.append(attn(ch))
            if level and i == num_res_blocks:
                layers.append(Upsample(ch, conv_resample, dims, out_channels=ch))
                ds //= 2
            self.output_blocks.append(ns.TimestepEmbedSequential(*layers))
    self.out = nn.Sequential(
        normalization(ch), nn.SiLU(), conv_nd(dims, model_channels, out_channels, 3, padding=1)
    )


def run_unet(self, x, timesteps=None, context=None, y=None, **kwargs):
    assert (y is not None) == (self.num_classes is not None), (
        "must specify y if and only if the model is class-conditional"
    )
    emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
    if self.num_classes is not None:
        assert y.shape[0] == x.shape[0]
        emb = emb + self.label_emb(y)
    hs = []
    h = x.type(self.dtype)
    for module in self.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = self.middle_block(h, emb, context)
    for module in self.output_blocks:
        h = module(th.cat([h, hs.pop()], dim=1), emb, context)
    return self.out(h.type(x.dtype))


class UNetModel(nn.Module):
    def __init__(
        self,
        image_size,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        **kwargs,
    ):
        super().__init__()
        import sys

        build_unet(
            self,
            sys.modules[__name__],
            image_size,
            in_channels,
            model_channels,
            out_channels,
            num_res_blocks,
            attention_resolutions,
            **kwargs,
        )

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        return run_unet(self, x, timesteps, context, y, **kwargs)
