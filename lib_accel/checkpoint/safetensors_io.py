"""Reader and streaming writer for the safetensors format, using only torch and the standard library.

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of UTF-8 JSON (padded with spaces to a
multiple of 8), then the raw little-endian tensor bytes. The JSON maps each tensor name to ``dtype``,
``shape`` and ``data_offsets`` (relative to the end of the header), plus an optional ``__metadata__``
str -> str map.

Contracts and trade-offs:

* Reading validates the whole header before any tensor is read: sizes agree with dtype and shape, the
  offsets tile the data section exactly (no overlap, no hole, nothing past or after the end), as the
  reference implementation requires. :class:`SafetensorsFile` reads one tensor at a time on demand, so
  peak memory is the tensors the caller keeps, not the file.
* Writing streams: the caller declares every tensor's name, dtype and shape up front (the header comes
  first), then a callback supplies each tensor just before its bytes are written. A converted 4 GB
  checkpoint therefore never needs two full copies in memory.
* Byte compatibility (checked against ``safetensors`` 0.8): tensors are laid out like the reference,
  sorted by dtype (widest first, the reference's enum order) then name, with compact JSON and the same
  escaping. The reference writes ``__metadata__`` entries in hash order; this module sorts them, so
  files match the reference byte for byte whenever the metadata has at most one entry, and match after
  parsing otherwise.
* Sub-byte dtypes (F4, F6_*) are not supported: reading them raises :class:`SafetensorsError`.
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
from typing import BinaryIO

import torch

MAX_HEADER_BYTES = 100_000_000  # same limit as the reference reader
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
    """The file is not valid safetensors, or uses something this module does not support."""


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
        raise SafetensorsError(f"dtype {code!r} is not supported by this reader on torch "
                               f"{torch.__version__}") from None


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


@dataclass(frozen=True)
class TensorInfo:
    """One header entry; ``begin``/``end`` are offsets inside the data section."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)


def _no_duplicates(pairs: list) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise SafetensorsError(f"duplicate key {k!r} in header")
        d[k] = v
    return d


def read_header(f: BinaryIO, file_size: int) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of ``f`` (positioned anywhere); returns infos, metadata, data start."""
    f.seek(0)
    raw = f.read(8)
    if len(raw) < 8:
        raise SafetensorsError("file is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise SafetensorsError(f"header length {n} is larger than the file or the {MAX_HEADER_BYTES} limit")
    text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not valid UTF-8 JSON: {e}") from None
    except RecursionError:  # a valid header nests three levels; a hostile one thousands
        raise SafetensorsError("header JSON nests too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    data_len = file_size - 8 - n
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"tensor {name!r}: needs dtype, shape and two data_offsets") from None
        ints = list(shape) + [begin, end] if isinstance(shape, list) else None
        if not ints or not all(type(i) is int and i >= 0 for i in ints) or not isinstance(code, str):
            raise SafetensorsError(f"tensor {name!r}: bad dtype, shape or offsets")
        nbytes = TensorSpec(name, torch_dtype(code), tuple(shape)).nbytes
        if end - begin != nbytes:
            raise SafetensorsError(f"tensor {name!r}: {end - begin} bytes for {code}{shape} needs {nbytes}")
        infos[name] = TensorInfo(name, code, tuple(shape), begin, end)
    pos = 0
    for info in sorted(infos.values(), key=lambda i: (i.begin, i.end)):
        if info.begin != pos:
            what = "overlaps another tensor" if info.begin < pos else "leaves a hole before it"
            raise SafetensorsError(f"tensor {info.name!r}: data_offsets {info.begin} {what}")
        pos = info.end
    if pos != data_len:
        raise SafetensorsError(f"tensors cover {pos} bytes but the data section has {data_len}")
    return infos, dict(metadata), 8 + n


def _byteswapped(flat_u8: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Host order <-> little-endian for a flat uint8 view of ``itemsize``-byte elements (no-op on x86/ARM)."""
    if sys.byteorder == "little" or itemsize == 1:
        return flat_u8
    return flat_u8.reshape(-1, itemsize).flip(1).reshape(-1).contiguous()


class SafetensorsFile(Mapping):
    """Lazy, validated read access: ``with SafetensorsFile(p) as st: t = st["name"]`` reads one tensor."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        try:
            size = os.fstat(self._f.fileno()).st_size
            self.infos, self.metadata, self.data_start = read_header(self._f, size)
        except BaseException:
            self._f.close()
            raise

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        dtype = torch_dtype(info.code)
        n = info.end - info.begin
        if n == 0:
            return torch.empty(info.shape, dtype=dtype)
        buf = bytearray(n)
        self._f.seek(self.data_start + info.begin)
        view, got = memoryview(buf), 0
        while got < n:
            k = self._f.readinto(view[got:])
            if not k:
                raise SafetensorsError(f"tensor {name!r}: file ended early")
            got += k
        flat = _byteswapped(torch.frombuffer(buf, dtype=torch.uint8), _itemsize(dtype))
        return flat.view(dtype).reshape(info.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a file, in header order (reads the whole file into memory)."""
    with SafetensorsFile(path) as st:
        return {k: st[k] for k in st}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    with SafetensorsFile(path) as st:
        return dict(st.metadata)


def load(data: bytes) -> dict[str, torch.Tensor]:
    """Parse an in-memory file (as produced by :func:`save` or ``safetensors.torch.save``)."""
    f = io.BytesIO(data)
    infos, _, start = read_header(f, len(data))
    out = {}
    for name, info in infos.items():
        dtype = torch_dtype(info.code)
        if info.end == info.begin:
            out[name] = torch.empty(info.shape, dtype=dtype)
            continue
        raw = torch.frombuffer(bytearray(data[start + info.begin:start + info.end]), dtype=torch.uint8)
        out[name] = _byteswapped(raw, _itemsize(dtype)).view(dtype).reshape(info.shape)
    return out


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
