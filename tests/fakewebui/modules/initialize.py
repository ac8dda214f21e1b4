"""Fake of modules/initialize.py (+ initialize_util.configure_opts_onchange): start-up and the part of it that
Reload UI repeats. The model is loaded synchronously (the real uses a thread)."""

from modules.shared_cmd_options import cmd_opts


def imports():
    import ldm.modules.attention  # noqa: F401
    import sgm.modules.attention  # noqa: F401
    from modules import shared_init

    shared_init.initialize()
    from modules import processing  # noqa: F401


def configure_opts_onchange():
    from modules import sd_hijack, sd_models, sd_vae, shared
    from modules.call_queue import wrap_queued_call

    shared.opts.onchange("sd_model_checkpoint", wrap_queued_call(lambda: sd_models.reload_model_weights()), call=False)
    shared.opts.onchange(
        "cross_attention_optimization",
        wrap_queued_call(lambda: sd_hijack.model_hijack.redo_hijack(shared.sd_model)),
        call=False,
    )
    shared.opts.onchange("sd_vae", wrap_queued_call(lambda: sd_vae.reload_vae_weights()), call=False)
    shared.opts.onchange(
        "sd_vae_overrides_per_model_preferences", wrap_queued_call(lambda: sd_vae.reload_vae_weights()), call=False
    )
    shared.opts.onchange("fp8_storage", wrap_queued_call(lambda: sd_models.reload_model_weights()), call=False)
    shared.opts.onchange(
        "cache_fp16_weight",
        wrap_queued_call(lambda: sd_models.reload_model_weights(forced_reload=True)),
        call=False,
    )


def initialize():
    configure_opts_onchange()
    from modules import sd_models

    sd_models.setup_model()
    initialize_rest(reload_script_modules=False)


def initialize_rest(*, reload_script_modules=False):
    """Called both from initialize() and when reloading the webui."""
    from modules import extensions

    extensions.list_extensions()

    from modules import scripts, sd_models, shared

    sd_models.list_models()
    scripts.load_scripts()

    from modules import sd_vae

    sd_vae.refresh_vae_list()

    from modules import script_callbacks, sd_hijack, sd_hijack_optimizations

    script_callbacks.on_list_optimizers(sd_hijack_optimizations.list_optimizers)
    sd_hijack.list_optimizers()

    from modules import sd_unet

    sd_unet.list_unets()

    def load_model():
        from modules import devices

        shared.sd_model  # noqa: B018  (loads it on first access)
        if sd_hijack.current_optimizer is None:
            sd_hijack.apply_optimizations()
        devices.first_time_calculation()

    if not cmd_opts.skip_load_model_at_start:
        load_model()

    shared.reload_hypernetworks()
