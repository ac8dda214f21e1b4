"""Fake of sgm/modules/diffusionmodules/openaimodel.py: sgm's own ResBlock/TimestepEmbedSequential/UNetModel
classes (distinct from ldm's), built with the same layout rules as the ldm fake. As in the real, the forward
looks ``timestep_embedding`` and ``th`` up in this module (modules/sd_hijack_unet.py and sd_hijack replace
them), adds ``label_emb(y)`` when the UNet is class-conditional (SDXL: ``num_classes="sequential"``) and does
NOT cast x to its dtype (ldm's does): x arrives in ``devices.dtype_unet`` through sd_hijack_unet's
``OpenAIWrapper.forward`` hijack."""

import sys

import torch as th
from ldm.modules.diffusionmodules.openaimodel import ResBlockBody, TimestepBlock, build_unet
from sgm.modules.attention import SpatialTransformer
from torch import nn

from .util import checkpoint, timestep_embedding


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb, context=None, **kwargs):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(ResBlockBody, TimestepBlock):
    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)


class UNetModel(nn.Module):
    def __init__(
        self, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions, **kwargs
    ):
        super().__init__()
        kwargs.setdefault("use_spatial_transformer", True)
        build_unet(
            self,
            sys.modules[__name__],
            None,
            in_channels,
            model_channels,
            out_channels,
            num_res_blocks,
            attention_resolutions,
            **kwargs,
        )

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        assert (y is not None) == (self.num_classes is not None), (
            "must specify y if and only if the model is class-conditional"
        )
        hs = []
        t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False)
        emb = self.time_embed(t_emb)
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = th.cat([h, hs.pop()], dim=1)
            h = module(h, emb, context)
        h = h.type(x.dtype)
        return self.out(h)
