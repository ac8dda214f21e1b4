"""Fake of sgm/models/diffusion.py: ``DiffusionEngine`` (SDXL) with ``conditioner``, ``model`` (an
``OpenAIWrapper`` of sgm/modules/diffusionmodules/wrappers.py around the sgm UNet, as the real config's
``network_wrapper``) and ``first_stage_model`` built from sgm's AttnBlock. The methods the WebUI adds in
modules/sd_models_xl.py (get_learned_conditioning, apply_model, get_first_stage_encoding) are defined here
directly.

The conditioner mirrors sgm's GeneralConditioner: each embedder's output goes to "crossattn" (3-D, joined on the
last dim) or "vector" (2-D, joined on dim 1). Like SDXL's: two text encoders (the second also gives a pooled
vector) and three size embedders (original size, crop corner, target size), so ``vector`` has the UNet's
``adm_in_channels`` features and the UNet adds ``label_emb(y)`` to its time embedding."""

import torch
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from sgm.modules.diffusionmodules import model as vae_blocks
from sgm.modules.diffusionmodules.openaimodel import UNetModel
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
from torch import nn

SIZE_EMBED_DIM = 8  # per number (the real: 256)


class FrozenOpenCLIPEmbedder2(FrozenCLIPEmbedder):
    """SDXL's second text encoder stand-in: tokens and a pooled vector (the mean of the tokens)."""

    input_key = "txt"

    def forward(self, text):
        z = self.transformer(text)
        return z, z.mean(dim=1)


class ConcatTimestepEmbedderND(nn.Module):
    """(b, n) numbers -> (b, n * outdim) sinusoidal embeddings."""

    def __init__(self, outdim, input_key):
        super().__init__()
        self.outdim, self.input_key = outdim, input_key

    def forward(self, x):
        b, dims = x.shape
        return timestep_embedding(x.reshape(-1), self.outdim).reshape(b, dims * self.outdim)


class GeneralConditioner(nn.Module):
    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2}

    def __init__(self, embedders):
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch):
        output = {}
        for embedder in self.embedders:
            emb_out = embedder(batch[getattr(embedder, "input_key", "txt")])
            for emb in emb_out if isinstance(emb_out, (list, tuple)) else [emb_out]:
                key = self.OUTPUT_DIM2KEYS[emb.dim()]
                if key in output:
                    output[key] = torch.cat((output[key], emb), self.KEY2CATDIM[key])
                else:
                    output[key] = emb
        return output


class DiffusionEngine(nn.Module):
    def __init__(self, network_config, scale_factor=0.13025):
        super().__init__()
        self.model = OpenAIWrapper(UNetModel(**network_config))
        half = network_config["context_dim"] // 2
        self.conditioner = GeneralConditioner(
            [FrozenCLIPEmbedder(half), FrozenOpenCLIPEmbedder2(half)]
            + [ConcatTimestepEmbedderND(SIZE_EMBED_DIM, key)
               for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]
        )
        self.first_stage_model = AutoencoderKL(blocks=vae_blocks)
        self.scale_factor = scale_factor
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def get_learned_conditioning(self, batch):
        """sd_models_xl.get_learned_conditioning: the prompts plus the size conditions (``batch.width`` and
        ``batch.height`` when the batch has them, else 1024), as tensors of ``devices.dtype``."""
        from modules import devices

        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        devices_args = dict(device=devices.device, dtype=devices.dtype)
        sdxl_conds = {
            "txt": batch,
            "original_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(len(batch), 1),
            "crop_coords_top_left": torch.tensor([0, 0], **devices_args).repeat(len(batch), 1),
            "target_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(len(batch), 1),
        }
        return self.conditioner(sdxl_conds)

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)

    def get_first_stage_encoding(self, x):
        return x
