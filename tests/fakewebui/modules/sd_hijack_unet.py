"""Fake of modules/sd_hijack_unet.py (v1.10.1): the ``CondFunc`` hijacks it installs when it is imported (by
modules/sd_hijack.py, as in the real), with the real targets, conditions and casts:

* ``apply_model`` wraps ``ldm.models.diffusion.ddpm.LatentDiffusion.apply_model`` (twice: once only while
  ``devices.unet_needs_upcast``, once always) and ``sgm.modules.diffusionmodules.wrappers.OpenAIWrapper.forward``:
  the conditioning tensors (lists too), x and the timesteps are cast to ``devices.dtype_unet`` - for SDXL as for
  SD1/SD2 - and the call runs under ``devices.autocast()``; with ``unet_needs_upcast`` the result is float32.
* ``timestep_embedding`` of ldm's and sgm's openaimodel: the embedding is cast to ``devices.dtype_unet``
  (float32 for int64 timesteps while upcasting).
* while upcasting: GroupNorm32/GEGLU run in float32 (CUDA only, as in the real) and the first-stage
  encode/decode casts to ``devices.dtype_vae``.
* ``th`` (torch with a ``cat`` that resizes the skip connection), which sd_hijack.apply_optimizations puts in
  ldm's and sgm's openaimodel; ``spatial_transformer_forward`` for ldm's SpatialTransformer.

Not faked: the device-side ``timestep_embedding`` rewrite (same values), ddpm_edit (instruct-pix2pix) and
open_clip's GELU."""

import torch
from modules import devices
from modules.sd_hijack_utils import CondFunc


class TorchHijackForUnet:
    """torch, with a ``cat`` that resizes the first of two tensors to the second's height and width."""

    def __getattr__(self, item):
        if item == "cat":
            return self.cat
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


def apply_model(orig_func, self, x_noisy, t, cond, **kwargs):
    """Always make sure inputs to unet are in correct dtype."""
    if isinstance(cond, dict):
        for y in cond:
            if isinstance(cond[y], list):
                cond[y] = [x.to(devices.dtype_unet) if isinstance(x, torch.Tensor) else x for x in cond[y]]
            else:
                cond[y] = cond[y].to(devices.dtype_unet) if isinstance(cond[y], torch.Tensor) else cond[y]
    with devices.autocast():
        result = orig_func(self, x_noisy.to(devices.dtype_unet), t.to(devices.dtype_unet), cond, **kwargs)
        return result.float() if devices.unet_needs_upcast else result


def spatial_transformer_forward(_, self, x: torch.Tensor, context=None):
    if not isinstance(context, list):
        context = [context]
    b, c, h, w = x.shape
    x_in = x
    x = self.norm(x)
    if not self.use_linear:
        x = self.proj_in(x)
    x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if self.use_linear:
        x = self.proj_in(x)
    for i, block in enumerate(self.transformer_blocks):
        x = block(x, context=context[i])
    if self.use_linear:
        x = self.proj_out(x)
    x = x.view(b, h, w, c).permute(0, 3, 1, 2)
    if not self.use_linear:
        x = self.proj_out(x)
    return x + x_in


def unet_needs_upcast(*args, **kwargs):
    return devices.unet_needs_upcast


CondFunc("ldm.models.diffusion.ddpm.LatentDiffusion.apply_model", apply_model, unet_needs_upcast)
CondFunc("ldm.modules.attention.SpatialTransformer.forward", spatial_transformer_forward)
CondFunc(
    "ldm.modules.diffusionmodules.openaimodel.timestep_embedding",
    lambda orig_func, timesteps, *args, **kwargs: orig_func(timesteps, *args, **kwargs).to(
        torch.float32 if timesteps.dtype == torch.int64 else devices.dtype_unet
    ),
    unet_needs_upcast,
)

if torch.cuda.is_available():  # the real also for torch <= 1.13.2
    CondFunc(
        "ldm.modules.diffusionmodules.util.GroupNorm32.forward",
        lambda orig_func, self, *args, **kwargs: orig_func(self.float(), *args, **kwargs),
        unet_needs_upcast,
    )
    CondFunc(
        "ldm.modules.attention.GEGLU.forward",
        lambda orig_func, self, x: orig_func(self.float(), x.float()).to(devices.dtype_unet),
        unet_needs_upcast,
    )


def first_stage_cond(_, self, *args, **kwargs):
    return devices.unet_needs_upcast and self.model.diffusion_model.dtype == torch.float16


def first_stage_sub(orig_func, self, x, **kwargs):
    return orig_func(self, x.to(devices.dtype_vae), **kwargs)


CondFunc("ldm.models.diffusion.ddpm.LatentDiffusion.decode_first_stage", first_stage_sub, first_stage_cond)
CondFunc("ldm.models.diffusion.ddpm.LatentDiffusion.encode_first_stage", first_stage_sub, first_stage_cond)
CondFunc(
    "ldm.models.diffusion.ddpm.LatentDiffusion.get_first_stage_encoding",
    lambda orig_func, *args, **kwargs: orig_func(*args, **kwargs).float(),
    first_stage_cond,
)

CondFunc("ldm.models.diffusion.ddpm.LatentDiffusion.apply_model", apply_model)
CondFunc("sgm.modules.diffusionmodules.wrappers.OpenAIWrapper.forward", apply_model)


def timestep_embedding_cast_result(orig_func, timesteps, *args, **kwargs):
    dtype = torch.float32 if devices.unet_needs_upcast and timesteps.dtype == torch.int64 else devices.dtype_unet
    return orig_func(timesteps, *args, **kwargs).to(dtype=dtype)


CondFunc("ldm.modules.diffusionmodules.openaimodel.timestep_embedding", timestep_embedding_cast_result)
CondFunc("sgm.modules.diffusionmodules.openaimodel.timestep_embedding", timestep_embedding_cast_result)
