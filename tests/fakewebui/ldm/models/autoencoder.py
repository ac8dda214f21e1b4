"""Fake of ldm/models/autoencoder.py: a tiny AutoencoderKL whose encoder and decoder contain ``AttnBlock``s
(``decoder.mid.attn_1`` as in the real); ``encode`` returns the latent mean instead of a distribution."""

import torch.nn.functional as F
from ldm.modules.diffusionmodules import model as vae_blocks
from torch import nn


class _Mid(nn.Module):
    def __init__(self, ch, blocks):
        super().__init__()
        self.attn_1 = blocks.AttnBlock(ch)


class _Coder(nn.Module):
    def __init__(self, ch_in, ch, ch_out, blocks):
        super().__init__()
        self.conv_in = nn.Conv2d(ch_in, ch, 3, padding=1)
        self.mid = _Mid(ch, blocks)
        self.norm_out = blocks.Normalize(ch)
        self.conv_out = nn.Conv2d(ch, ch_out, 3, padding=1)
        self.blocks = [blocks]  # a list, so the module is not registered as a child

    def forward(self, x):
        h = self.mid.attn_1(self.conv_in(x))
        return self.conv_out(self.blocks[0].nonlinearity(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, embed_dim=4, ch=32, blocks=vae_blocks):
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = _Coder(3, ch, 2 * embed_dim, blocks)
        self.decoder = _Coder(embed_dim, ch, 3, blocks)

    def encode(self, x):
        return self.encoder(F.avg_pool2d(x, 2)).chunk(2, dim=1)[0]

    def decode(self, z):
        return self.decoder(F.interpolate(z, scale_factor=2, mode="nearest"))
