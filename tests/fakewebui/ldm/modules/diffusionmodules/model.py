"""Fake of ldm/modules/diffusionmodules/model.py: ``Normalize``, ``nonlinearity`` and the VAE's
``AttnBlock``."""

import torch
from torch import nn


def nonlinearity(x):
    return x * torch.sigmoid(x)


def Normalize(in_channels, num_groups=32):
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, residual (the real default forward)."""

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        weights = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * (
            int(c) ** -0.5
        )
        weights = torch.nn.functional.softmax(weights, dim=2)
        h_ = torch.bmm(v.reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)
