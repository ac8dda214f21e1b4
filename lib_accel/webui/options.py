"""The "Accel" settings section, built from :data:`lib_accel.config.SETTINGS`, and the config it yields."""

from __future__ import annotations

from collections.abc import Callable

from ..config import SETTINGS, AccelConfig

SECTION = ("accel", "Accel")


def add_settings(on_change: Callable[[], None]) -> None:
    """Add every ``accel_*`` option to ``shared.opts`` (idempotent: re-adding replaces the entry)."""
    import gradio as gr
    from modules import shared

    for spec in SETTINGS:
        if spec.choices is not None:
            component, args = gr.Radio, {"choices": list(spec.choices)}
        elif isinstance(spec.default, bool):
            component, args = gr.Checkbox, None
        elif spec.minimum is not None:
            component, args = gr.Slider, {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
        else:
            component, args = None, None
        info = shared.OptionInfo(spec.default, spec.label, component, args, onchange=on_change,
                                 section=SECTION).info(spec.explanation)
        shared.opts.add_option(spec.key, info)


def read_config() -> AccelConfig:
    from modules import shared
    return AccelConfig.from_options(lambda key: getattr(shared.opts, key, None))
