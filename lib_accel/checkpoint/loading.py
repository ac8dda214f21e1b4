"""Open checkpoints without running code from them: .safetensors directly, pickles (.ckpt/.pt/.pth) safely.

Pickled checkpoints are loaded in up to two passes, and neither ever imports or calls anything outside a
fixed allowlist:

1. ``torch.load(path, map_location="cpu", weights_only=True)`` (torch's own audited unpickler; plus
   ``mmap=True`` for zip-format files where this torch supports it, so tensors page in on demand).
2. Only if torch refuses: a restricted unpickler that allows torch's tensor-rebuild helpers and plain
   containers, and turns a short list of known-inert training globals (Lightning's ``ModelCheckpoint``
   callback state, numpy scalars such as ``global_step``, ``argparse.Namespace`` hyper-parameters) into
   empty stand-ins that are never constructed for real. Original Stable Diffusion 1.x checkpoints
   carry such objects next to the weights, and torch 2.1's allowlist refuses them.

Any other global (``os.system``, ``builtins.exec``, a model class, ...) raises
:class:`UnsafeCheckpointError` naming it, before anything from the file is called. The trade-off: pass 2
relies on this module's allowlist instead of torch's; it is as strict as the WebUI's own ``safe.py``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import os
import pickle
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lib_accel.checkpoint import safetensors_io

SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
INERT_GLOBALS = frozenset({
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.model_checkpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "argparse.Namespace", "torch.torch_version.TorchVersion",
})
_MAX_DEPTH = 32
Tensors = dict[str, torch.Tensor]


class UnsafeCheckpointError(Exception):
    """The pickle references a global outside the allowlist; nothing from the file was executed."""

    def __init__(self, path: str, refused: str) -> None:
        self.path, self.refused = path, refused
        super().__init__(f"{os.path.basename(path)}: refused to load: its pickle references '{refused}', "
                         "which is not tensor data, so the file may contain code; nothing from it was run")


class CheckpointFormatError(ValueError):
    """Not a readable checkpoint (corrupt, truncated, no tensors, unknown layout)."""


class InertObject:
    """Empty stand-in for an allowlisted non-tensor training object; keeps nothing from the file."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.global_name}, not loaded>"


@functools.cache
def _inert_class(full_name: str) -> type:
    return type("Inert", (InertObject,), {"global_name": full_name})


class _Refused(pickle.UnpicklingError):
    def __init__(self, full_name: str) -> None:
        super().__init__(full_name)
        self.full_name = full_name


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as numpy/py2 pickles use it (str -> latin-1 bytes); nothing else is allowed."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return obj.encode("latin-1", errors)


def _allowed(module: str, name: str, inert: frozenset[str]) -> Any:
    full = f"{module}.{name}"
    if full == "collections.OrderedDict":
        return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"):
        return getattr(torch._utils, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if full in ("torch.Size", "torch.nn.parameter.Parameter"):
        return torch.Size if name == "Size" else torch.nn.Parameter
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return set if name == "set" else frozenset
    if full == "_codecs.encode":
        return _latin1_encode
    if full in inert:
        return _inert_class(full)
    raise _Refused(full)


def _restricted_pickle_module(inert: frozenset[str]) -> types.ModuleType:
    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return _allowed(module, name, inert)

    mod = types.ModuleType("accel_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod


def _torch_load(path: str, **kw: Any) -> Any:
    # torch.serialization.load is torch.load itself; the WebUI replaces the ``torch.load`` attribute with
    # its own checker, which returns None (after logging a traceback) for files it refuses.
    return torch.serialization.load(path, **kw)


@functools.cache
def _torch_load_has_mmap() -> bool:
    return "mmap" in inspect.signature(torch.serialization.load).parameters  # torch >= 2.1


def torch_load_safely(path: str, *, mmap: bool = True, inert_globals: Iterable[str] = INERT_GLOBALS,
                      ) -> tuple[Any, str]:
    """Unpickle a torch checkpoint without executing code from it; returns (object, how it was loaded).

    Raises FileNotFoundError, :class:`UnsafeCheckpointError` (names the refused global) or
    :class:`CheckpointFormatError`. Pass ``inert_globals=()`` to accept only what torch accepts.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    kw: dict[str, Any] = {"map_location": "cpu"}
    if mmap and _torch_load_has_mmap() and zipfile.is_zipfile(path):
        kw["mmap"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _torch_load(path, weights_only=True, **kw), "torch.load(weights_only=True)"
        except pickle.UnpicklingError as e:
            first_error = e
        except Exception as e:
            raise CheckpointFormatError(f"{os.path.basename(path)}: not a readable checkpoint: {e}") from None
        module = _restricted_pickle_module(frozenset(inert_globals))
        try:
            obj = _torch_load(path, weights_only=False, pickle_module=module, **kw)
        except _Refused as e:
            raise UnsafeCheckpointError(path, e.full_name) from None
        except Exception as e:
            detail = str(first_error).strip().splitlines()[0][:200]
            raise CheckpointFormatError(f"{os.path.basename(path)}: not a readable checkpoint: "
                                        f"{type(e).__name__}: {e} (torch: {detail})") from None
    return obj, "restricted unpickler (inert stand-ins for training metadata)"


def describe(obj: Any) -> str:
    """A short human summary of a non-tensor value, for reports."""
    if isinstance(obj, torch.Tensor):
        return f"tensor {obj.dtype} {list(obj.shape)}"
    if isinstance(obj, (bool, int, float)) or obj is None:
        return f"{type(obj).__name__} {obj!r}"
    if isinstance(obj, str):
        return f"str {obj[:60]!r}"
    if isinstance(obj, Mapping):
        return f"dict with {len(obj)} entries"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} with {len(obj)} items"
    return repr(obj) if isinstance(obj, InertObject) else type(obj).__name__


def _walk(obj: Any, name: str, tensors: dict[str, torch.Tensor], extras: dict[str, str] | None,
          depth: int = 0) -> int:
    """Collect tensors under ``obj`` as dotted names; returns how many non-tensor leaves were skipped."""
    if isinstance(obj, torch.Tensor):
        if name in tensors:
            if extras is not None:
                extras[name] = "duplicate name after flattening; the first tensor was kept"
            return 1
        tensors[name] = obj
        return 0
    if depth < _MAX_DEPTH and isinstance(obj, (Mapping, list, tuple)):
        items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
        return sum(_walk(v, f"{name}.{k}" if name else str(k), tensors, extras, depth + 1) for k, v in items)
    if extras is not None:
        extras[name] = describe(obj)
    return 1


def flatten_checkpoint(obj: Any) -> tuple[Tensors, Tensors, dict[str, str], str]:
    """Split a loaded checkpoint into (model tensors, other tensors, extras, wrapper key).

    The model state dict is the first of :data:`WRAPPER_KEYS` that holds tensors (Lightning/CompVis
    ``state_dict``), else the top level. Tensors outside it (``optimizer_states``, a top-level
    ``model_ema`` dict, ...) come back flattened under their own top-level names; every non-tensor
    entry outside it is summarised in ``extras`` (one line per top-level key).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"checkpoint is a {type(obj).__name__}, not a dict of tensors")
    wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)
                    and any(isinstance(v, torch.Tensor) for v in obj[k].values())), "")
    model: dict[str, torch.Tensor] = {}
    other: dict[str, torch.Tensor] = {}
    extras: dict[str, str] = {}
    for key, value in obj.items():
        key = str(key)
        if key == wrapper:
            _walk(value, "", model, extras)
        elif not wrapper and isinstance(value, torch.Tensor):
            model.setdefault(key, value)
        else:
            before = len(other)
            skipped = _walk(value, key, other, None)
            n = len(other) - before
            nbytes = sum(t.numel() * t.element_size() for t in list(other.values())[before:])
            extras[key] = describe(value) + (f", {n} tensors ({nbytes:,} bytes)" if n else "")
            if n and skipped:
                extras[key] += f", {skipped} other values"
    if not model and not other:
        raise CheckpointFormatError("no tensors found in the checkpoint")
    return model, other, extras, wrapper


@dataclass
class LoadedCheckpoint:
    """An opened checkpoint. ``tensors`` may read lazily from the file: close it (or use ``with``)."""

    path: str
    format: str  # "safetensors" | "pickle"
    tensors: Mapping[str, torch.Tensor]
    other_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    wrapper: str = ""
    loader: str = ""

    def close(self) -> None:
        if isinstance(self.tensors, safetensors_io.SafetensorsFile):
            self.tensors.close()
        self.tensors, self.other_tensors = {}, {}

    def __enter__(self) -> LoadedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_safetensors(path: str) -> bool:
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIXES)


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = True,
                    inert_globals: Iterable[str] = INERT_GLOBALS) -> LoadedCheckpoint:
    """Open a .safetensors (lazily, via ``safetensors.safe_open``) or a pickled checkpoint (safely, see module doc)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    if is_safetensors(path):
        try:
            st = safetensors_io.SafetensorsFile(path)
        except safetensors_io.SafetensorsError as e:  # its message names the file and the reason
            raise CheckpointFormatError(str(e)) from None
        return LoadedCheckpoint(path, "safetensors", st, metadata=dict(st.metadata), loader="safetensors")
    obj, how = torch_load_safely(path, mmap=mmap, inert_globals=inert_globals)
    model, other, extras, wrapper = flatten_checkpoint(obj)
    return LoadedCheckpoint(path, "pickle", model, other, extras, wrapper=wrapper, loader=how)


def tensor_meta(ckpt: LoadedCheckpoint, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
    """dtype and shape of a model tensor without reading its data (cheap for safetensors)."""
    if isinstance(ckpt.tensors, safetensors_io.SafetensorsFile):
        return ckpt.tensors.meta(name)
    t = ckpt.tensors[name]
    return t.dtype, tuple(t.shape)


def file_size(path: str | os.PathLike) -> int:
    return os.stat(path).st_size


def sha256_file(path: str | os.PathLike, progress: Callable[[int, int], None] | None = None,
                chunk_size: int = 8 * 1024 * 1024) -> str:
    """Hex sha256 of a file, streamed in ``chunk_size`` blocks; ``progress(done, total)`` per block."""
    h, done, total = hashlib.sha256(), 0, file_size(path)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return h.hexdigest()
