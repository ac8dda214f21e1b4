"""Two fixes to torch's own picklers for saving a WebUI UNet's precompiled graph (torch 2.13, experimental API).

* **Guards** (``torch._dynamo.guards.GuardsStatePickler``): values torch does not guard on are saved as a
  ``_Missing`` placeholder, recognised by ``id()``. For shared immutable constants that is wrong: once the
  Lora extension has set ``network_current_names = ()`` on a layer, *every* ``()`` in the file (the
  arguments of any pickled object) becomes ``_Missing`` and the file cannot be read back. Tuples and
  frozensets of plain constants are saved as themselves.
* **The graph** (``torch._dynamo.aot_compile.AOTCompilePickler``): a function that is no longer reachable by
  its own name (the WebUI replaces ``UNetModel.forward`` and keeps the original in a closure) cannot be
  pickled by reference; it is saved by value as torch saves local functions (code, module, closure).

torch's code names both classes as module globals, so they are swapped in for the duration of one save
(under a lock). The subclasses are module attributes here so that pickle can name their methods; call
:func:`register` before loading a file written with them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types

_LOCK = threading.Lock()
_ATOMS = (type(None), bool, int, float, complex, str, bytes)


def _constant(obj) -> bool:
    return type(obj) in (tuple, frozenset) and all(type(v) in _ATOMS or _constant(v) for v in obj)


def _importable(fn: types.FunctionType) -> bool:
    target = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is fn


def register() -> tuple[type, type]:
    """Create (once) the two subclasses as attributes of this module; returns (guards, graph) picklers."""
    module = sys.modules[__name__]
    if not hasattr(module, "AccelGuardsPickler"):
        from torch._dynamo.aot_compile import AOTCompilePickler
        from torch._dynamo.guards import GuardsStatePickler

        def guards_reducer(self, obj):
            if _constant(obj) and id(obj) in self.missing_values:
                return NotImplemented  # a shared constant, not a value torch chose to leave out
            return GuardsStatePickler.reducer_override(self, obj)

        def graph_reducer(self, obj):
            if isinstance(obj, types.FunctionType) and "<locals>" not in obj.__qualname__ and not _importable(obj):
                return type(self)._unpickle_nested_function, (
                    obj.__code__, obj.__module__, obj.__qualname__, obj.__defaults__, obj.__closure__)
            return AOTCompilePickler.reducer_override(self, obj)

        module.AccelGuardsPickler = type("AccelGuardsPickler", (GuardsStatePickler,),
                                         {"reducer_override": guards_reducer, "__module__": __name__})
        module.AccelGraphPickler = type("AccelGraphPickler", (AOTCompilePickler,),
                                        {"reducer_override": graph_reducer, "__module__": __name__})
    return module.AccelGuardsPickler, module.AccelGraphPickler


@contextlib.contextmanager
def fixed_picklers():
    """While active (one thread at a time), torch's guard and graph serialisation use the fixed picklers."""
    import torch._dynamo.aot_compile as aot
    import torch._dynamo.guards as guards
    guards_pickler, graph_pickler = register()
    with _LOCK:
        saved = guards.GuardsStatePickler, aot.AOTCompilePickler
        guards.GuardsStatePickler, aot.AOTCompilePickler = guards_pickler, graph_pickler
        try:
            yield
        finally:
            guards.GuardsStatePickler, aot.AOTCompilePickler = saved
