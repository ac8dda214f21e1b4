"""Accel's entry file: registers the WebUI callbacks at module level and delegates to lib_accel.

The WebUI executes this file at start-up and on every Reload UI (after clearing all callbacks), so each
callback is registered exactly once per load. All state lives in ``lib_accel.webui.extension``.
"""

from modules import script_callbacks

from lib_accel.webui import extension

accel = extension.get()

script_callbacks.on_ui_settings(accel.on_ui_settings, name="accel")
script_callbacks.on_list_optimizers(accel.on_list_optimizers, name="accel")
script_callbacks.on_model_loaded(accel.on_model_loaded, name="accel")
script_callbacks.on_app_started(accel.on_app_started, name="accel")
script_callbacks.on_script_unloaded(accel.on_script_unloaded, name="accel")
