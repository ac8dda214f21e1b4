"""Fake of modules/devices.py for a CPU-only (or plain CUDA) machine: devices, dtypes, autocast helpers and
the first-element NaN check with the real messages. No MPS/XPU/NPU/fp8 handling."""

import contextlib
import sys
from functools import lru_cache

import torch
from modules import shared


def has_xpu() -> bool:
    return False


def has_mps() -> bool:
    if sys.platform != "darwin":
        return False
    return torch.backends.mps.is_available()


def get_cuda_device_string():
    if shared.cmd_opts.device_id is not None:
        return f"cuda:{shared.cmd_opts.device_id}"
    return "cuda"


def get_optimal_device_name():
    if torch.cuda.is_available():
        return get_cuda_device_string()
    if has_mps():
        return "mps"
    return "cpu"


def get_optimal_device():
    return torch.device(get_optimal_device_name())


def get_device_for(task):
    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu
    return get_optimal_device()


def torch_gc():
    if torch.cuda.is_available():
        with torch.cuda.device(get_cuda_device_string()):
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()


def torch_npu_set_device():
    pass


cpu: torch.device = torch.device("cpu")
fp8: bool = False
force_fp16: bool = False
device: torch.device = None
device_interrogate: torch.device = None
device_gfpgan: torch.device = None
device_esrgan: torch.device = None
device_codeformer: torch.device = None
dtype: torch.dtype = torch.float16
dtype_vae: torch.dtype = torch.float16
dtype_unet: torch.dtype = torch.float16
dtype_inference: torch.dtype = torch.float16
unet_needs_upcast = False


def cond_cast_unet(input):
    if force_fp16:
        return input.to(torch.float16)
    return input.to(dtype_unet) if unet_needs_upcast else input


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def autocast(disable=False):
    if disable or force_fp16:
        return contextlib.nullcontext()
    if dtype == torch.float32 or dtype_inference == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def without_autocast(disable=False):
    return (
        torch.autocast("cuda", enabled=False)
        if torch.is_autocast_enabled() and not disable
        else contextlib.nullcontext()
    )


class NansException(Exception):
    pass


def test_for_nans(x, where):
    if shared.cmd_opts.disable_nan_check:
        return
    if not torch.isnan(x[(0,) * len(x.shape)]):
        return
    if where == "unet":
        message = "A tensor with NaNs was produced in Unet."
        if not shared.cmd_opts.no_half:
            message += (
                " This could be either because there's not enough precision to represent the picture, or"
                " because your video card does not support half type. Try setting the"
                ' "Upcast cross attention layer to float32" option in Settings > Stable Diffusion or using'
                " the --no-half commandline argument to fix this."
            )
    elif where == "vae":
        message = "A tensor with NaNs was produced in VAE."
        if not shared.cmd_opts.no_half and not shared.cmd_opts.no_half_vae:
            message += (
                " This could be because there's not enough precision to represent the picture. Try adding"
                " --no-half-vae commandline argument to fix this."
            )
    else:
        message = "A tensor with NaNs was produced."
    message += " Use --disable-nan-check commandline argument to disable this check."
    raise NansException(message)


@lru_cache
def first_time_calculation():
    x = torch.zeros((1, 1)).to(device, dtype)
    torch.nn.Linear(1, 1).to(device, dtype)(x)
