"""Fake of sgm/modules/diffusionmodules/util.py (generative-models 45c443b): its own ``checkpoint``."""

from ldm.modules.diffusionmodules.util import (  # noqa: F401
    CheckpointFunction,
    avg_pool_nd,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


def checkpoint(func, inputs, params, flag):
    """Runs ``func(*inputs)``; with ``flag`` through CheckpointFunction (recompute in backward)."""
    if not flag:
        return func(*inputs)
    return CheckpointFunction.apply(func, len(inputs), *(tuple(inputs) + tuple(params)))
