"""Safetensors in Accel: reading through the ``safetensors`` package, writing with Accel's own streaming writer.

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of UTF-8 JSON (padded with spaces to a
multiple of 8), then the raw little-endian tensor bytes. The JSON maps each tensor name to ``dtype``,
``shape`` and ``data_offsets`` (relative to the end of the header), plus an optional ``__metadata__``
str -> str map.

Contracts and trade-offs:

* Reading is the package's ``safetensors.safe_open(path, framework="pt")``, which every WebUI ships
  (v1.10.1 pins 0.4.2), imported lazily. Only API that 0.4.2 already has is used: ``keys``, ``metadata``,
  ``get_tensor`` and ``get_slice(name).get_shape()/get_dtype()``. The package validates the whole header
  when the file is opened (sizes agree with dtype and shape, offsets tile the data section, header size and
  JSON nesting limits), then :class:`SafetensorsFile` reads one tensor at a time on demand, so peak memory
  is the tensors the caller keeps. Whatever the package raises for a bad or unreadable file becomes
  :class:`SafetensorsError` naming the file; only a missing file stays FileNotFoundError. A file the
  package refuses, the WebUI (which loads with the same package) cannot load either.
* Writing streams, and is Accel's own: the package's ``save_file`` needs a dict of every output tensor, so
  it holds the whole output in memory (6.5 GiB for an SDXL fp32 -> fp16 slim, against 0.2 GiB here:
  benchmarks/results/safetensors-writer-memory-cpu-epyc-2core.md). The caller declares every tensor's
  name, dtype and shape up front (the header comes first), then a callback supplies each tensor just
  before its bytes are written.
* Byte compatibility (checked against ``safetensors`` 0.8): tensors are laid out like the reference,
  sorted by dtype (widest first, the reference's enum order) then name, with compact JSON and the same
  escaping. The reference writes ``__metadata__`` entries in hash order; this module sorts them, so
  files match the reference byte for byte whenever the metadata has at most one entry, and match after
  parsing otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

_CHUNK = 16 * 1024 * 1024

# (code, torch attribute, reference sort rank): the rank is the reference's Dtype enum order.
_DTYPES = (
    ("BOOL", "bool", 0), ("U8", "uint8", 4), ("I8", "int8", 5), ("F8_E5M2", "float8_e5m2", 6),
    ("F8_E4M3", "float8_e4m3fn", 7), ("F8_E8M0", "float8_e8m0fnu", 8), ("I16", "int16", 9),
    ("U16", "uint16", 10), ("F16", "float16", 11), ("BF16", "bfloat16", 12), ("I32", "int32", 13),
    ("U32", "uint32", 14), ("F32", "float32", 15), ("C64", "complex64", 16), ("F64", "float64", 17),
    ("I64", "int64", 18), ("U64", "uint64", 19),
)


class SafetensorsError(ValueError):
    """The file is not valid safetensors (or cannot be read), or uses something Accel does not support."""


@functools.cache
def _tables() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str], dict[str, int]]:
    by_code, by_dtype, rank = {}, {}, {}
    for code, attr, r in _DTYPES:
        dt = getattr(torch, attr, None)  # float8 needs torch >= 2.1, U16/U32/U64 >= 2.3, F8_E8M0 >= 2.7
        if isinstance(dt, torch.dtype):
            by_code[code], by_dtype[dt], rank[code] = dt, code, r
    return by_code, by_dtype, rank


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code ("F16", "BF16", ...) of a torch dtype; SafetensorsError if there is none."""
    try:
        return _tables()[1][dtype]
    except KeyError:
        raise SafetensorsError(f"torch dtype {dtype} has no safetensors equivalent") from None


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype for a safetensors code; SafetensorsError if this torch lacks it."""
    try:
        return _tables()[0][code]
    except KeyError:
        raise SafetensorsError(f"dtype {code!r} has no torch equivalent on torch {torch.__version__}") from None


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: known before its data exists, because the header is written first."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _itemsize(self.dtype)
        for d in self.shape:
            n *= d
        return n


def _byteswapped(flat_u8: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Host order <-> little-endian for a flat uint8 view of ``itemsize``-byte elements (no-op on x86/ARM)."""
    if sys.byteorder == "little" or itemsize == 1:
        return flat_u8
    return flat_u8.reshape(-1, itemsize).flip(1).reshape(-1).contiguous()


def _from_package(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` on the package, its errors turned into SafetensorsError("what: why")."""
    from safetensors import SafetensorError  # 0.4.2 and later export it at the top level

    try:
        return call(*args, **kwargs)
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as e:  # OSError: a folder, no permission, a read error
        raise SafetensorsError(f"{what}: {e}") from None


class SafetensorsFile(Mapping):
    """Lazy read access: ``with SafetensorsFile(p) as st: t = st["name"]`` reads one tensor.

    ``metadata`` is the header's ``__metadata__`` ({} when absent); :meth:`meta` gives a tensor's dtype and
    shape from the header without reading its data. Raises FileNotFoundError or SafetensorsError.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        self._name = os.path.basename(self.path)
        self._f = _from_package(f"{self._name}: not a valid safetensors file", safe_open, self.path,
                                framework="pt")
        self._keys = tuple(self._f.keys())
        self._key_set = frozenset(self._keys)
        self.metadata: dict[str, str] = dict(self._f.metadata() or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._key_set:
            raise KeyError(name)
        return _from_package(f"{self._name}: tensor {name!r}", self._f.get_tensor, name)

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of tensor ``name``, from the header (its data is not read)."""
        if name not in self._key_set:
            raise KeyError(name)
        what = f"{self._name}: tensor {name!r}"
        view = _from_package(what, self._f.get_slice, name)
        try:
            dtype = torch_dtype(view.get_dtype())
        except SafetensorsError as e:
            raise SafetensorsError(f"{what}: {e}") from None
        return dtype, tuple(view.get_shape())

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        """Release the file (idempotent). ``__exit__`` is the only way safe_open 0.4.2 offers to unmap it."""
        self._f.__exit__(None, None, None)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a file (reads the whole file into memory)."""
    with SafetensorsFile(path) as st:
        return {k: st[k] for k in st}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header's ``__metadata__`` map ({} when it has none); no tensor is read."""
    with SafetensorsFile(path) as st:
        return dict(st.metadata)


def layout(specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None,
           ) -> tuple[bytes, list[TensorSpec]]:
    """The exact header bytes (length prefix and padding included) and the order the data must follow."""
    _, _, rank = _tables()
    specs = sorted(specs, key=lambda s: (-rank[dtype_code(s.dtype)], s.name))
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    pos = 0
    for s in specs:
        if s.name in header:
            raise SafetensorsError(f"duplicate or reserved tensor name {s.name!r}")
        header[s.name] = {"dtype": dtype_code(s.dtype), "shape": list(s.shape),
                          "data_offsets": [pos, pos + s.nbytes]}
        pos += s.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, specs


def predicted_size(specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None) -> int:
    head, ordered = layout(specs, metadata)
    return len(head) + sum(s.nbytes for s in ordered)


def write_safetensors(f: BinaryIO, specs: Iterable[TensorSpec], get_tensor: Callable[[str], torch.Tensor],
                      metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> int:
    """Stream a file to ``f``: header first, then ``get_tensor(name)`` for each spec, one at a time.

    Each supplied tensor must have exactly the declared dtype and shape (else SafetensorsError; the
    caller owns cleaning up the partial file). ``progress(done_bytes, total_bytes)`` is called after
    each chunk. Returns the number of bytes written.
    """
    head, ordered = layout(specs, metadata)
    total = len(head) + sum(s.nbytes for s in ordered)
    f.write(head)
    done = len(head)
    if progress:
        progress(done, total)
    for spec in ordered:
        t = get_tensor(spec.name)
        if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
            raise SafetensorsError(f"tensor {spec.name!r} is {t.dtype}{tuple(t.shape)}, "
                                   f"declared {spec.dtype}{spec.shape}")
        if spec.nbytes:
            flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            flat = _byteswapped(flat, _itemsize(spec.dtype))
            buf = memoryview((ctypes.c_char * spec.nbytes).from_address(flat.data_ptr())).cast("B")
            for i in range(0, spec.nbytes, _CHUNK):
                done += f.write(buf[i:i + _CHUNK])
                if progress:
                    progress(done, total)
            del buf, flat
        del t
    return done


def save(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The file as bytes (for small data and tests; big files should use :func:`write_safetensors`)."""
    f = io.BytesIO()
    write_safetensors(f, _specs(tensors), tensors.__getitem__, metadata)
    return f.getvalue()


def save_file(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` (not atomic: callers that need atomicity write a temp file)."""
    with open(path, "wb") as f:
        write_safetensors(f, _specs(tensors), tensors.__getitem__, metadata)


def _specs(tensors: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
