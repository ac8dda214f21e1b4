"""Fake of extensions-builtin/Lora/lora_patches.py (v1.10.1): the ten torch.nn patches, made and undone through
``modules.patches`` under this module's name; each attribute holds what was there before (torch's own, unless
another extension patched first) and is None after ``undo()``."""

import networks
import torch
from modules import patches

_PATCHED = [(cls, field, f"{cls.__name__}_{short}", f"network_{cls.__name__}_{short}")
            for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
                        torch.nn.MultiheadAttention)
            for field, short in (("forward", "forward"), ("_load_from_state_dict", "load_state_dict"))]


class LoraPatches:
    def __init__(self):
        for cls, field, attr, replacement in _PATCHED:
            setattr(self, attr, patches.patch(__name__, cls, field, getattr(networks, replacement)))

    def undo(self):
        for cls, field, attr, _ in _PATCHED:
            setattr(self, attr, patches.undo(__name__, cls, field))
