"""The "Accel" settings section, built from :data:`lib_accel.config.SETTINGS`, and the config it yields."""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..config import SETTINGS, AccelConfig

SECTION = ("accel", "Accel")


def add_settings(on_change: Callable[[], None]) -> None:
    """Add every ``accel_*`` option to ``shared.opts`` (idempotent: re-adding replaces the entry)."""
    import gradio as gr
    from modules import shared

    for spec in SETTINGS:
        refresh = None
        if spec.choices_from == "checkpoints":
            from modules import sd_models
            # multiselect goes on the constructor: the WebUI re-sends component_args through gr.update(),
            # which gradio 3.41 refuses for multiselect
            component, args = functools.partial(gr.Dropdown, multiselect=True), \
                lambda: {"choices": sd_models.checkpoint_tiles()}
            refresh = sd_models.list_models
        elif spec.choices_from == "compile_backends":
            component, args = gr.Dropdown, lambda: {"choices": compile_backends()}
        elif spec.choices is not None:
            component, args = gr.Radio, {"choices": list(spec.choices)}
        elif isinstance(spec.default, bool):
            component, args = gr.Checkbox, None
        elif spec.minimum is not None:
            component, args = gr.Slider, {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
        else:
            component, args = None, None
        # the WebUI stores lists (JSON) and its settings page refuses a value whose type differs from the default
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        info = shared.OptionInfo(default, spec.label, component, args, onchange=on_change, section=SECTION,
                                 refresh=refresh).info(spec.explanation)
        shared.opts.add_option(spec.key, info)


def compile_backends() -> list[str]:
    """Backends torch.compile lists here (imports dynamo: called when the settings page is built)."""
    try:
        import torch._dynamo
        return list(torch._dynamo.list_backends()) or ["inductor"]
    except Exception:  # an unusable dynamo still leaves the default selectable
        return ["inductor"]


def read_config() -> AccelConfig:
    from modules import shared
    return AccelConfig.from_options(lambda key: getattr(shared.opts, key, None))
