"""Fake of sgm/modules/diffusionmodules/wrappers.py (generative-models 45c443b): ``OpenAIWrapper``, the
``model`` of a DiffusionEngine, whose ``forward`` modules/sd_hijack_unet.py wraps (casting x, t and the
conditioning to ``devices.dtype_unet``). ``compile_model`` is accepted and ignored."""

import torch
import torch.nn as nn

OPENAIUNETWRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"


class IdentityWrapper(nn.Module):
    def __init__(self, diffusion_model, compile_model: bool = False):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


class OpenAIWrapper(IdentityWrapper):
    def forward(self, x: torch.Tensor, t: torch.Tensor, c: dict, **kwargs) -> torch.Tensor:
        x = torch.cat((x, c.get("concat", torch.Tensor([]).type_as(x))), dim=1)
        return self.diffusion_model(
            x,
            timesteps=t,
            context=c.get("crossattn"),
            y=c.get("vector"),
            **kwargs,
        )
