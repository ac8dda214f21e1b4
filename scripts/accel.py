"""Accel's entry file: registers the WebUI callbacks at module level and delegates to lib_accel.

The WebUI executes this file at start-up and on every Reload UI (after clearing all callbacks), so each
callback is registered exactly once per load. All state lives in ``lib_accel.webui``.
"""

from modules import script_callbacks

from lib_accel.webui import extension, live_stats, ui_tab
from lib_accel.webui.api import routes as api

accel = extension.get()
stats = live_stats.get()

script_callbacks.on_ui_settings(accel.on_ui_settings, name="accel")
script_callbacks.on_list_optimizers(accel.on_list_optimizers, name="accel")
script_callbacks.on_model_loaded(accel.on_model_loaded, name="accel")
script_callbacks.on_app_started(accel.on_app_started, name="accel")
script_callbacks.on_app_started(stats.on_app_started, name="accel-stats")  # stage timers (through accel.patches)
script_callbacks.on_app_started(api.on_app_started, name="accel-api")  # /accel/v1/*
script_callbacks.on_cfg_denoiser(stats.on_cfg_denoiser, name="accel")
script_callbacks.on_cfg_after_cfg(stats.on_cfg_after_cfg, name="accel")
script_callbacks.on_ui_tabs(ui_tab.on_ui_tabs, name="accel")
script_callbacks.on_script_unloaded(accel.on_script_unloaded, name="accel")
