"""Fake of modules/sd_models_config.py: picks a (tiny) model config from the checkpoint's contents.

Fake checkpoints are small JSON files: {"kind": "sd1" | "sd2" | "sdxl", "seed": int}. The configs keep the
real UNet keyword names (use_checkpoint=False as the WebUI forces since v1.10) at a size that runs in
milliseconds."""

import json

config_default = "v1-inference"

CONFIGS = {
    "v1-inference": (
        "ldm.models.diffusion.ddpm.LatentDiffusion",
        {
            "cond_stage_target": "FrozenCLIPEmbedder",
            "unet_config": dict(
                image_size=8,
                in_channels=4,
                out_channels=4,
                model_channels=32,
                attention_resolutions=[2, 1],
                num_res_blocks=1,
                channel_mult=[1, 2],
                num_heads=2,
                use_spatial_transformer=True,
                transformer_depth=1,
                context_dim=64,
                use_checkpoint=False,
                legacy=False,
            ),
        },
    ),
    "v2-inference": (
        "ldm.models.diffusion.ddpm.LatentDiffusion",
        {
            "cond_stage_target": "FrozenOpenCLIPEmbedder",
            "unet_config": dict(
                image_size=8,
                in_channels=4,
                out_channels=4,
                model_channels=32,
                attention_resolutions=[2, 1],
                num_res_blocks=1,
                channel_mult=[1, 2],
                num_head_channels=16,
                use_spatial_transformer=True,
                use_linear_in_transformer=True,
                transformer_depth=1,
                context_dim=64,
                use_checkpoint=False,
                legacy=False,
            ),
        },
    ),
    "sd_xl_base": (
        "sgm.models.diffusion.DiffusionEngine",
        {
            "network_config": dict(
                in_channels=4,
                out_channels=4,
                model_channels=32,
                attention_resolutions=[2],
                num_res_blocks=1,
                channel_mult=[1, 2],
                num_head_channels=16,
                use_linear_in_transformer=True,
                transformer_depth=2,
                context_dim=64,
                num_classes="sequential",
                adm_in_channels=80,  # pooled text (32) + 3 sizes x 2 numbers x 8 (sgm/models/diffusion.py)
                use_checkpoint=False,
                legacy=False,
            )
        },
    ),
}
KINDS = {"sd1": "v1-inference", "sd2": "v2-inference", "sdxl": "sd_xl_base"}


def read_state_dict(filename):
    with open(filename, encoding="utf8") as f:
        return json.load(f)


def find_checkpoint_config(state_dict, info):
    return KINDS.get((state_dict or {}).get("kind", "sd1"), config_default)


def instantiate_from_config(config_name):
    import copy
    import importlib

    target, params = CONFIGS[config_name]
    module, cls = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**copy.deepcopy(params))
