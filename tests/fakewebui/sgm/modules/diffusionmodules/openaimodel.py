"""Fake of sgm/modules/diffusionmodules/openaimodel.py: sgm's own ResBlock/TimestepEmbedSequential/UNetModel
classes (distinct from ldm's), built with the same layout rules as the ldm fake."""

import sys

from ldm.modules.diffusionmodules.openaimodel import ResBlockBody, TimestepBlock, build_unet, run_unet
from sgm.modules.attention import SpatialTransformer
from torch import nn

from .util import checkpoint


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
        return run_unet(self, x, timesteps, context, y, **kwargs)
