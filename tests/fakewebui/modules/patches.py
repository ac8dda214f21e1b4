"""Fake of modules/patches.py: ``patch``/``undo``/``original`` keyed by (key, obj, field), same errors."""

from collections import defaultdict


def patch(key, obj, field, replacement):
    """Replaces ``obj.field`` and remembers the original; patching the same key/obj/field twice raises."""
    patch_key = (obj, field)
    if patch_key in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")
    original_func = getattr(obj, field)
    originals[key][patch_key] = original_func
    setattr(obj, field, replacement)
    return original_func


def undo(key, obj, field):
    """Restores the original; raises RuntimeError when there is no such patch. Returns None."""
    patch_key = (obj, field)
    if patch_key not in originals[key]:
        raise RuntimeError(f"there is no patch for {field} to undo")
    setattr(obj, field, originals[key].pop(patch_key))
    return None


def original(key, obj, field):
    """The original recorded by patch(), or None."""
    return originals[key].get((obj, field), None)


originals = defaultdict(dict)
