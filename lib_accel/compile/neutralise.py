"""Turning ldm's and sgm's gradient-checkpoint wrappers into plain calls before compiling.

With checkpointing on, every ResBlock and transformer block runs through
``CheckpointFunction.apply`` (a custom autograd.Function), which dynamo cannot trace: compile fails or
breaks the graph at every block. For inference the wrapper does nothing useful, so the flags are switched
off on the modules (``use_checkpoint`` on ResBlocks, ``checkpoint`` on transformer blocks) and the
module-level ``checkpoint`` functions are replaced by :func:`plain_checkpoint` (the adapter patches every
module that imported the function by name). WebUI >= 1.10 already builds the UNet with
``use_checkpoint=False``; older WebUIs and models with their own yaml do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

_FLAG_NAMES = ("use_checkpoint", "checkpoint")


def plain_checkpoint(func: Callable, inputs: Iterable, params: Iterable, flag: bool):
    """Drop-in for ldm/sgm ``checkpoint(func, inputs, params, flag)`` that always calls ``func`` directly."""
    return func(*inputs)


def disable_checkpoint_flags(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, bool]]:
    """Set every boolean checkpoint flag under ``module`` to False; returns what to pass to restore."""
    changed = []
    for sub in module.modules():
        for name in _FLAG_NAMES:
            value = sub.__dict__.get(name)
            if isinstance(value, bool) and value:
                setattr(sub, name, False)
                changed.append((sub, name, value))
    return changed


def restore_checkpoint_flags(changed: list[tuple[torch.nn.Module, str, bool]]) -> None:
    for sub, name, value in changed:
        setattr(sub, name, value)
