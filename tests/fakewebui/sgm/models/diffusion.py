"""Fake of sgm/models/diffusion.py: ``DiffusionEngine`` (SDXL) with ``conditioner``,
``model.diffusion_model`` (the sgm UNet, via an OpenAIWrapper as in
sgm/modules/diffusionmodules/wrappers.py) and ``first_stage_model`` built from sgm's AttnBlock. The methods
the WebUI adds in modules/sd_models_xl.py are defined here directly."""

import torch
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from sgm.modules.diffusionmodules import model as vae_blocks
from sgm.modules.diffusionmodules.openaimodel import UNetModel
from torch import nn


class OpenAIWrapper(nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, c, **kwargs):
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)


class GeneralConditioner(nn.Module):
    def __init__(self, embedders):
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch):
        return {"crossattn": torch.cat([e(batch["txt"]) for e in self.embedders], dim=2)}


class DiffusionEngine(nn.Module):
    def __init__(self, network_config, scale_factor=0.13025):
        super().__init__()
        self.model = OpenAIWrapper(UNetModel(**network_config))
        half = network_config["context_dim"] // 2
        self.conditioner = GeneralConditioner([FrozenCLIPEmbedder(half), FrozenCLIPEmbedder(half)])
        self.first_stage_model = AutoencoderKL(blocks=vae_blocks)
        self.scale_factor = scale_factor
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def get_learned_conditioning(self, batch):
        return self.conditioner({"txt": batch})

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)
