"""Fake of modules/shared_options.py: the v1.10.1 options (keys, defaults, sections, component_args callables)
that the faked code paths and Accel read. Components are None because gradio is not imported."""

from modules import shared_items
from modules.options import OptionInfo, categories, options_section

options_templates = {}
restricted_opts = {"outdir_samples", "temp_dir", "clean_temp_dir_at_start"}

categories.register_category("sd", "Stable Diffusion")
categories.register_category("ui", "User Interface")
categories.register_category("system", "System")

options_templates.update(
    options_section(
        ("sd", "Stable Diffusion", "sd"),
        {
            "sd_model_checkpoint": OptionInfo(
                None,
                "Stable Diffusion checkpoint",
                None,
                lambda: {"choices": shared_items.list_checkpoint_tiles()},
                refresh=shared_items.refresh_checkpoints,
                infotext="Model hash",
            ),
            "sd_checkpoints_limit": OptionInfo(
                1,
                "Maximum number of checkpoints loaded at the same time",
                None,
                {"minimum": 1, "maximum": 10, "step": 1},
            ),
            "sd_checkpoints_keep_in_cpu": OptionInfo(True, "Only keep one model on device"),
            "sd_checkpoint_cache": OptionInfo(
                0, "Checkpoints to cache in RAM", None, {"minimum": 0, "maximum": 10, "step": 1}
            ),
            "sd_unet": OptionInfo(
                "Automatic", "SD Unet", None, lambda: {"choices": shared_items.sd_unet_items()}
            ),
            "enable_batch_seeds": OptionInfo(
                True, "Make K-diffusion samplers produce same images in a batch"
            ),
            "upcast_attn": OptionInfo(False, "Upcast cross attention layer to float32"),
            "randn_source": OptionInfo(
                "GPU", "Random number generator source.", None, {"choices": ["GPU", "CPU", "NV"]}
            ),
        },
    )
)
options_templates.update(
    options_section(
        ("vae", "VAE", "sd"),
        {
            "sd_vae_checkpoint_cache": OptionInfo(0, "VAE Checkpoints to cache in RAM"),
            "sd_vae": OptionInfo(
                "Automatic", "SD VAE", None, lambda: {"choices": shared_items.sd_vae_items()}, infotext="VAE"
            ),
            "sd_vae_overrides_per_model_preferences": OptionInfo(True, "Selected VAE overrides per-model preferences"),
            "auto_vae_precision_bfloat16": OptionInfo(False, "Automatically convert VAE to bfloat16"),
            "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats"),
        },
    )
)
options_templates.update(
    options_section(
        ("optimizations", "Optimizations", "sd"),
        {
            "cross_attention_optimization": OptionInfo(
                "Automatic",
                "Cross attention optimization",
                None,
                lambda: {"choices": shared_items.cross_attention_optimizations()},
            ),
            "s_min_uncond": OptionInfo(
                0.0, "Negative Guidance minimum sigma", None, {"minimum": 0.0, "maximum": 15.0, "step": 0.01}
            ),
            "s_min_uncond_all": OptionInfo(False, "Negative Guidance minimum sigma all steps"),
            "token_merging_ratio": OptionInfo(
                0.0, "Token merging ratio", None, {"minimum": 0.0, "maximum": 0.9, "step": 0.1}
            ),
            "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt"),
            "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
            "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
            "fp8_storage": OptionInfo(
                "Disable", "FP8 weight", None, {"choices": ["Disable", "Enable for SDXL", "Enable"]}
            ),
            "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
        },
    )
)
options_templates.update(
    options_section(
        ("ui", "User interface", "ui"),
        {
            "quicksettings_list": OptionInfo(["sd_model_checkpoint"], "Quicksettings list").needs_reload_ui(),
            "enable_reloading_ui_scripts": OptionInfo(False, "Reload UI scripts when using Reload UI option"),
            "sd_checkpoint_dropdown_use_short": OptionInfo(
                False, "Checkpoint dropdown: use filenames without paths"
            ),
        },
    )
)
options_templates.update(
    options_section(
        ("sampler-params", "Sampler parameters", "sd"),
        {
            "skip_early_cond": OptionInfo(
                0.0,
                "Ignore negative prompt during early sampling",
                None,
                {"minimum": 0.0, "maximum": 1.0, "step": 0.01},
            ),
            "live_preview_content": OptionInfo(
                "Prompt", "Live preview subject", None, {"choices": ["Combined", "Prompt", "Negative prompt"]}
            ),
        },
    )
)
options_templates.update(
    options_section(
        (None, "Hidden options"),
        {
            "disabled_extensions": OptionInfo([], "Disable these extensions"),
            "disable_all_extensions": OptionInfo(
                "none", "Disable all extensions (preserves the list of disabled extensions)"
            ),
            "sd_checkpoint_hash": OptionInfo("", "SHA256 hash of the current checkpoint"),
        },
    )
)
