"""Fake of ldm/util.py (stablediffusion cf1d67a): only the helpers the WebUI imports."""

from inspect import isfunction


def exists(val):
    return val is not None


def default(val, d):
    if val is not None:
        return val
    return d() if isfunction(d) else d
