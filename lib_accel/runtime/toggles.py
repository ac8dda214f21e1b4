"""Global torch flags and the UNet memory format, applied from an :class:`AccelConfig` and undone exactly.

:class:`RuntimeToggles` is the one owner of these changes. It records each flag's value before Accel
first touched it, so "default" (and :meth:`RuntimeToggles.undo`) returns to whatever the WebUI or the
user had set, not to torch's factory value. All of it takes effect at once, without a restart: torch
reads these flags on every call, and the memory-format change converts the weights in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import AccelConfig

NanCheck = Callable[[torch.Tensor, str], None]

_FLAGS: dict[str, tuple[tuple[object, str], ...]] = {
    "cudnn_benchmark": ((torch.backends.cudnn, "benchmark"),),
    "tf32": ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")),
}


class RuntimeToggles:
    def __init__(self) -> None:
        self._saved_flags: dict[tuple[int, str], tuple[object, str, object]] = {}
        self._channels_last_modules: list[torch.nn.Module] = []

    def apply(self, config: AccelConfig, unet: torch.nn.Module | None = None,
              webui_channels_last: bool = False) -> list[str]:
        """Apply ``config``; returns one line per change actually made (for the log)."""
        changes = []
        for name, targets in _FLAGS.items():
            mode = getattr(config, name)
            for obj, attr in targets:
                changes += self._set_flag(obj, attr, mode)
        if unet is not None:
            want = config.channels_last == "on" or (config.channels_last == "default" and webui_channels_last)
            changes += self.set_channels_last(unet, want)
        return changes

    def _set_flag(self, obj: object, attr: str, mode: str) -> list[str]:
        key = (id(obj), attr)
        if mode == "default":
            if key in self._saved_flags:
                _, _, original = self._saved_flags.pop(key)
                setattr(obj, attr, original)
                return [f"{attr} restored to {original}"]
            return []
        if key not in self._saved_flags:
            self._saved_flags[key] = (obj, attr, getattr(obj, attr))
        value = mode == "on"
        if getattr(obj, attr) == value:
            return []
        setattr(obj, attr, value)
        return [f"{attr} = {value}"]

    def set_channels_last(self, unet: torch.nn.Module, enabled: bool) -> list[str]:
        tracked = any(m is unet for m in self._channels_last_modules)
        if enabled and not is_channels_last(unet):
            unet.to(memory_format=torch.channels_last)
            if not tracked:
                self._channels_last_modules.append(unet)
            return ["UNet converted to channels-last"]
        if not enabled and tracked:
            self._channels_last_modules = [m for m in self._channels_last_modules if m is not unet]
            if is_channels_last(unet):
                unet.to(memory_format=torch.contiguous_format)
                return ["UNet converted back to contiguous"]
        return []

    def forget_module(self, unet: torch.nn.Module) -> None:
        """Stop tracking a UNet the WebUI has unloaded (its conversion is not undone)."""
        self._channels_last_modules = [m for m in self._channels_last_modules if m is not unet]

    def undo(self) -> list[str]:
        """Restore every flag and memory format Accel changed."""
        changes = []
        for obj, attr, original in self._saved_flags.values():
            setattr(obj, attr, original)
            changes.append(f"{attr} restored to {original}")
        self._saved_flags.clear()
        for module in self._channels_last_modules:
            module.to(memory_format=torch.contiguous_format)
            changes.append("UNet converted back to contiguous")
        self._channels_last_modules.clear()
        return changes


def is_channels_last(module: torch.nn.Module) -> bool:
    """True when the module's first 4-D weight is stored channels-last."""
    for p in module.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def make_nan_check(mode: str, webui_check: NanCheck) -> NanCheck:
    """The ``devices.test_for_nans`` to install for ``mode``.

    ``default`` keeps the WebUI's first-element check; ``off`` skips it (no GPU sync either); ``full`` looks
    at every element and, on a NaN, lets the WebUI's own check raise its usual message (it also honours
    ``--disable-nan-check``).
    """
    if mode == "default":
        return webui_check
    if mode == "off":
        def no_nan_check(x: torch.Tensor, where: str) -> None:
            return None
        return no_nan_check
    if mode == "full":
        def full_nan_check(x: torch.Tensor, where: str) -> None:
            if bool(torch.isnan(x).any()):
                webui_check(torch.full((1,), float("nan"), device=x.device), where)
        return full_nan_check
    raise ValueError(f"unknown NaN check mode {mode!r}")
