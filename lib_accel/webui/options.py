"""The "Accel" settings section, built from :data:`lib_accel.config.SETTINGS`, and the config it yields.

Invalid values (a hand-edited config.json, ``POST /sdapi/v1/options``, ``override_settings``: none of them
type-checks) fall back to their defaults in :func:`read_config`. Settings are read many times a second (every
image, every badge poll), so each invalid value is logged once, when it first appears, and listed by
:func:`invalid_settings` for the Accel tab while it stays in the settings.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from .. import features
from ..config import SETTINGS, AccelConfig, setting, validate

SECTION = ("accel", "Accel")
#: read for every image, so ``override_settings`` of these apply to that generation; every other setting is
#: applied when it changes (onchange), which override_settings never triggers
PER_GENERATION = frozenset({"accel_live_stats", "accel_infotext"})


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
            refresh = load_compile_backends
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


_backends = {"load": False}


def load_compile_backends() -> None:
    """The backend dropdown's refresh button: list torch's registered backends from now on (imports dynamo)."""
    _backends["load"] = True


def compile_backends() -> list[str]:
    """Choices for ``accel_compile_backend`` when the Settings page is built. torch's own list only once compile
    is on or the refresh button was pressed: importing ``torch._dynamo`` for it cost ~2 s of every start-up.
    The current value is always offered, so a backend saved earlier stays selectable."""
    config = read_config()
    names = list(features.compile_backends(load=_backends["load"] or config.compile_enabled))
    if config.compile_backend and config.compile_backend not in names:
        names.append(config.compile_backend)
    return names


_invalid_lock = threading.Lock()
_invalid: dict[str, None] = {}  # the messages of the values invalid at the last read, as an ordered set


def _log(message: str) -> None:
    print(message, flush=True)


def read_config(log: Callable[[str], None] = _log) -> AccelConfig:
    """The config from ``shared.opts``; each invalid value gets one ``log`` line when it first appears."""
    from modules import shared
    messages: list[str] = []
    config = AccelConfig.from_options(lambda key: getattr(shared.opts, key, None), warn=messages.append)
    with _invalid_lock:
        new = [m for m in messages if m not in _invalid]
        _invalid.clear()
        _invalid.update(dict.fromkeys(messages))
    for message in new:
        log(message)
    return config


def is_setting(key: str) -> bool:
    return any(spec.key == key for spec in SETTINGS)


def validated(key: str, raw: object) -> object:
    """``raw`` as :func:`read_config` would take it for ``key`` (the default when invalid); nothing is logged."""
    return validate(setting(key), raw)[0]


def invalid_settings() -> list[str]:
    """One message per ``accel_*`` value that was invalid at the last read (and was replaced by its default)."""
    with _invalid_lock:
        return list(_invalid)
