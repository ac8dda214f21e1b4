"""Fake of ldm/models/diffusion/ddpm.py: ``LatentDiffusion`` with ``model.diffusion_model`` (the UNet),
``first_stage_model`` (VAE), ``cond_stage_model`` (text encoder) and the methods the WebUI calls."""

import torch
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.encoders import modules as encoders
from torch import nn


class DiffusionWrapper(nn.Module):
    def __init__(self, unet_config):
        super().__init__()
        self.diffusion_model = UNetModel(**unet_config)
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class LatentDiffusion(nn.Module):
    def __init__(
        self, unet_config, cond_stage_target="FrozenCLIPEmbedder", scale_factor=0.18215, timesteps=1000
    ):
        super().__init__()
        self.model = DiffusionWrapper(unet_config)
        self.first_stage_model = AutoencoderKL()
        self.cond_stage_model = getattr(encoders, cond_stage_target)(unet_config["context_dim"])
        self.cond_stage_key = "txt"
        self.parameterization = "eps"
        self.scale_factor = scale_factor
        self.num_timesteps = timesteps
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, timesteps, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            cond = {"c_crossattn": [cond] if not isinstance(cond, list) else cond}
        return self.model(x_noisy, t, **cond)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        return self.scale_factor * encoder_posterior
