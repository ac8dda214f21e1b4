"""Fake of ldm/modules/diffusionmodules/util.py: ``checkpoint``/``CheckpointFunction`` and layer helpers."""

import math

import torch
from torch import nn


def checkpoint(func, inputs, params, flag):
    """Runs ``func(*inputs)``; with ``flag`` through CheckpointFunction (recompute in backward)."""
    if not flag:
        return func(*inputs)
    return CheckpointFunction.apply(func, len(inputs), *(tuple(inputs) + tuple(params)))


class CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run_function, length, *args):
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        with torch.no_grad():
            return ctx.run_function(*ctx.input_tensors)

    @staticmethod
    def backward(ctx, *output_grads):
        inputs = [x.detach().requires_grad_(True) for x in ctx.input_tensors]
        with torch.enable_grad():
            outputs = ctx.run_function(*[x.view_as(x) for x in inputs])
        grads = torch.autograd.grad(outputs, inputs + ctx.input_params, output_grads, allow_unused=True)
        del ctx.input_tensors, ctx.input_params
        return (None, None) + tuple(grads)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def conv_nd(dims, *args, **kwargs):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def linear(*args, **kwargs):
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](*args, **kwargs)


def zero_module(module):
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    """Sinusoidal embedding of ``timesteps`` (N,) -> (N, dim)."""
    if repeat_only:
        return timesteps[:, None].float().repeat(1, dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(
        timesteps.device
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb
