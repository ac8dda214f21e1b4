"""Fake of modules/script_callbacks.py: registrars ``on_X(callback, *, name=None)``, ``callback_map``,
``clear_callbacks`` and the invokers, with the real names, parameter classes and error reporting. Each
callback records the file that registered it (found on the call stack) and a unique name
"<extension>/<file>/<category>[/name]". Ordering from extension metadata (metadata.ini) is not faked; the
user order option prioritized_callbacks_* is."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors, extensions, shared


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p, self.filename, self.pnginfo = image, p, filename, pnginfo


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise, self.x, self.xi = noise, x, xi


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = (
            x,
            sampling_step,
            total_sampling_steps,
            inner_model,
        )


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs, self.cols, self.rows = imgs, cols, rows


@dataclasses.dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    if filename is None:
        stack = [x for x in inspect.stack(0) if x.filename != __file__]
        filename = stack[0].filename if stack else "unknown file"
    extension = extensions.find_extension(filename)
    extension_name = extension.canonical_name if extension else "base"
    callback_name = f"{extension_name}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f"/{name}"
    unique_callback_name = callback_name
    for index in range(1000):
        if not any(x.name == unique_callback_name for x in callbacks):
            break
        unique_callback_name = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique_callback_name))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    callbacks = unordered_callbacks.copy()
    if enable_user_sort:
        for name in reversed(getattr(shared.opts, "prioritized_callbacks_" + category, [])):
            index = next((i for i, callback in enumerate(callbacks) if callback.name == name), None)
            if index is not None:
                callbacks.insert(0, callbacks.pop(index))
    return callbacks


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])
    if not enable_user_sort:
        return sort_callbacks(category, unordered_callbacks, enable_user_sort=False)
    callbacks = ordered_callbacks_map.get(category)
    if callbacks is not None and len(callbacks) == len(unordered_callbacks):
        return callbacks
    callbacks = sort_callbacks(category, unordered_callbacks)
    ordered_callbacks_map[category] = callbacks
    return callbacks


def enumerate_callbacks():
    for category, callbacks in callback_map.items():
        yield category[10:] if category.startswith("callbacks_") else category, callbacks


CATEGORIES = (
    "app_started",
    "model_loaded",
    "ui_tabs",
    "ui_train_tabs",
    "ui_settings",
    "before_image_saved",
    "image_saved",
    "extra_noise",
    "cfg_denoiser",
    "cfg_denoised",
    "cfg_after_cfg",
    "before_component",
    "after_component",
    "image_grid",
    "infotext_pasted",
    "script_unloaded",
    "before_ui",
    "on_reload",
    "list_optimizers",
    "list_unets",
    "before_token_counter",
)
callback_map = {f"callbacks_{c}": [] for c in CATEGORIES}
ordered_callbacks_map = {}


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()


def _call_all(category, job, *args, reverse=False, **kwargs):
    callbacks = ordered_callbacks(category)
    for c in reversed(callbacks) if reverse else callbacks:
        try:
            c.callback(*args, **kwargs)
        except Exception:
            report_exception(c, job)


def _collect(category, job):
    res = []
    for c in ordered_callbacks(category):
        try:
            c.callback(res)
        except Exception:
            report_exception(c, job)
    return res


def app_started_callback(demo, app):
    _call_all("app_started", "app_started_callback", demo, app)


def app_reload_callback():
    _call_all("on_reload", "callbacks_on_reload")


def model_loaded_callback(sd_model):
    _call_all("model_loaded", "model_loaded_callback", sd_model)


def ui_tabs_callback():
    res = []
    for c in ordered_callbacks("ui_tabs"):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, "ui_tabs_callback")
    return res


def ui_train_tabs_callback(params: UiTrainTabParams):
    _call_all("ui_train_tabs", "callbacks_ui_train_tabs", params)


def ui_settings_callback():
    _call_all("ui_settings", "ui_settings_callback")


def before_image_saved_callback(params: ImageSaveParams):
    _call_all("before_image_saved", "before_image_saved_callback", params)


def image_saved_callback(params: ImageSaveParams):
    _call_all("image_saved", "image_saved_callback", params)


def extra_noise_callback(params: ExtraNoiseParams):
    _call_all("extra_noise", "callbacks_extra_noise", params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _call_all("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _call_all("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _call_all("cfg_after_cfg", "cfg_after_cfg_callback", params)


def before_component_callback(component, **kwargs):
    _call_all("before_component", "before_component_callback", component, **kwargs)


def after_component_callback(component, **kwargs):
    _call_all("after_component", "after_component_callback", component, **kwargs)


def image_grid_callback(params: ImageGridLoopParams):
    _call_all("image_grid", "image_grid", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _call_all("infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback():
    _call_all("script_unloaded", "script_unloaded", reverse=True)


def before_ui_callback():
    _call_all("before_ui", "before_ui", reverse=True)


def list_optimizers_callback():
    return _collect("list_optimizers", "list_optimizers")


def list_unets_callback():
    return _collect("list_unets", "list_unets")


def before_token_counter_callback(params: BeforeTokenCounterParams):
    _call_all("before_token_counter", "before_token_counter", params)


def remove_current_script_callbacks():
    stack = [x for x in inspect.stack(0) if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    if filename == "unknown file":
        return
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        callback_list[:] = [cb for cb in callback_list if cb.script != filename]


def remove_callbacks_for_function(callback_func):
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        callback_list[:] = [cb for cb in callback_list if cb.callback != callback_func]


def _registrar(category, doc):
    def register(callback, *, name=None):
        add_callback(callback_map["callbacks_" + category], callback, name=name, category=category)

    register.__name__ = register.__qualname__ = (
        "on_" + category if category != "on_reload" else "on_before_reload"
    )
    register.__doc__ = doc
    return register


on_app_started = _registrar("app_started", "callback(demo: gr.Blocks | None, app: FastAPI)")
on_before_reload = _registrar("on_reload", "callback() just before the server reloads")
on_model_loaded = _registrar(
    "model_loaded", "callback(sd_model) after a model is created or its weights reloaded"
)
on_ui_tabs = _registrar("ui_tabs", "callback() -> None | list[(component, title, elem_id)]")
on_ui_train_tabs = _registrar("ui_train_tabs", "callback(params: UiTrainTabParams)")
on_ui_settings = _registrar("ui_settings", "callback() before settings are populated; add options there")
on_before_image_saved = _registrar("before_image_saved", "callback(params: ImageSaveParams)")
on_image_saved = _registrar("image_saved", "callback(params: ImageSaveParams)")
on_extra_noise = _registrar("extra_noise", "callback(params: ExtraNoiseParams)")
on_cfg_denoiser = _registrar("cfg_denoiser", "callback(params: CFGDenoiserParams)")
on_cfg_denoised = _registrar("cfg_denoised", "callback(params: CFGDenoisedParams)")
on_cfg_after_cfg = _registrar("cfg_after_cfg", "callback(params: AfterCFGCallbackParams)")
on_before_component = _registrar("before_component", "callback(component, **kwargs)")
on_after_component = _registrar("after_component", "callback(component, **kwargs)")
on_image_grid = _registrar("image_grid", "callback(params: ImageGridLoopParams)")
on_infotext_pasted = _registrar("infotext_pasted", "callback(infotext: str, params: dict)")
on_script_unloaded = _registrar(
    "script_unloaded", "callback() before the script is unloaded; undo hijacks here"
)
on_before_ui = _registrar("before_ui", "callback() before the UI is created")
on_list_optimizers = _registrar("list_optimizers", "callback(res: list) appending SdOptimization objects")
on_list_unets = _registrar("list_unets", "callback(res: list) appending sd_unet.SdUnetOption objects")
on_before_token_counter = _registrar("before_token_counter", "callback(params: BeforeTokenCounterParams)")
