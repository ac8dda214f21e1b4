"""lib_accel.checkpoint.safetensors_io against the format spec and, byte for byte, the reference ``safetensors``."""

from __future__ import annotations

import io
import json
import struct

import pytest
import safetensors.torch as ref  # the reference: a pinned dev requirement, like numpy, which its writer needs
import torch
from safetensors import safe_open

from lib_accel.checkpoint import safetensors_io as sio

MIN_COMPARED = 12  # tensors every byte-compatibility test compares at least (22 with the pinned versions)


def _sample(dtype: torch.dtype, shape=(2, 3)) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.arange(6).reshape(shape) % 2 == 0
    if dtype.is_floating_point and torch.empty((), dtype=dtype).element_size() == 1:  # fp8
        return (torch.randn(shape) * 2).to(dtype)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    return torch.randint(0, 100, shape).to(dtype)


def _all_dtypes() -> list[torch.dtype]:
    return list(sio._tables()[1])


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ts = {f"t.{sio.dtype_code(dt).lower()}": _sample(dt) for dt in _all_dtypes()}
    ts.update({"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "zz.f32": torch.randn(5),
               "a.f32": torch.randn(1, 1, 2), "ünïcode \u2028\"q\"": torch.ones(2, dtype=torch.float16)})
    return ts


def _ref_supported(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors the reference can write. Only an unknown dtype is left out (an older reference lacks some
    dtypes a newer torch has: its size table raises KeyError); any other error is raised, and fewer than
    MIN_COMPARED tensors left fails the calling test."""
    out = {}
    for k, v in ts.items():
        try:
            ref.save({k: v})
        except KeyError as e:
            if e.args != (v.dtype,):
                raise
            continue
        out[k] = v
    assert len(out) >= MIN_COMPARED, f"the reference wrote only {sorted(out)} of {sorted(ts)}"
    return out


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"only": "one \u00e9\n\x01 \\ \""}])
def test_bytes_identical_to_reference(metadata):
    ts = _ref_supported(_tensors())
    assert sio.save(ts, metadata) == ref.save(ts, metadata=metadata)


def test_many_metadata_entries_match_after_parsing():
    """The reference writes metadata in hash order, so only the parsed header can be compared."""
    ts = _ref_supported(_tensors())
    md = {f"k{i}": f"v{i}" for i in range(7)}
    ours, theirs = sio.save(ts, md), ref.save(ts, metadata=md)
    assert len(ours) == len(theirs)
    n = struct.unpack("<Q", ours[:8])[0]
    assert json.loads(ours[8:8 + n]) == json.loads(theirs[8:8 + n])
    assert ours[8 + n:] == theirs[8 + n:]
    assert list(json.loads(ours[8:8 + n])["__metadata__"]) == sorted(md)


def test_non_contiguous_input_written_like_contiguous():
    t = torch.randn(4, 6)[:, ::2].t()
    assert not t.is_contiguous()
    assert sio.save({"x": t}) == ref.save({"x": t.contiguous()})


def test_reference_file_read_by_us(tmp_path):
    ts = _ref_supported(_tensors())
    path = tmp_path / "ref.safetensors"
    ref.save_file(ts, str(path), metadata={"a": "1", "b": "2"})
    with sio.SafetensorsFile(path) as st:
        assert st.metadata == {"a": "1", "b": "2"}
        assert set(st) == set(ts)
        for k, v in ts.items():
            got = st[k]
            assert got.dtype == v.dtype and got.shape == v.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))


def test_our_file_read_by_reference(tmp_path):
    ts = _ref_supported(_tensors())
    path = tmp_path / "ours.safetensors"
    sio.save_file(ts, path, metadata={"format": "pt", "x": "y"})
    got = ref.load_file(str(path))
    for k, v in ts.items():
        assert got[k].dtype == v.dtype
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "x": "y"}


def test_reference_helper_raises_what_is_not_a_missing_dtype(monkeypatch):
    """Without numpy the reference raised ModuleNotFoundError for every tensor; the helper used to drop them all,
    and the tests that use it passed comparing nothing."""
    def no_numpy(tensors, metadata=None):
        raise ModuleNotFoundError("No module named 'numpy'")

    monkeypatch.setattr(ref, "save", no_numpy)
    with pytest.raises(ModuleNotFoundError, match="numpy"):
        _ref_supported(_tensors())


def test_reference_helper_keeps_every_dtype_the_reference_knows(monkeypatch):
    real_save = ref.save
    unknown = {torch.float8_e5m2} if hasattr(torch, "float8_e5m2") else set()

    def older_reference(tensors, metadata=None):
        (tensor,) = tensors.values()
        if tensor.dtype in unknown:
            raise KeyError(tensor.dtype)  # what the reference's size table raises for a dtype it lacks
        return real_save(tensors, metadata=metadata)

    monkeypatch.setattr(ref, "save", older_reference)
    ts = _tensors()
    kept = _ref_supported(ts)
    assert set(ts) - set(kept) == {k for k, v in ts.items() if v.dtype in unknown}
    def broken_reference(tensors, metadata=None):
        raise KeyError("other")

    monkeypatch.setattr(ref, "save", broken_reference)
    with pytest.raises(KeyError, match="other"):  # a KeyError that is not about the dtype is not a skip
        _ref_supported(ts)


def test_reference_compares_every_dtype_we_write():
    """The pinned reference knows every dtype Accel writes: all of them are compared, none left out."""
    ts = _tensors()
    assert set(_ref_supported(ts)) == set(ts)


def test_header_layout_padding_and_order():
    ts = {"b": torch.zeros(3, dtype=torch.float16), "a": torch.zeros(1, dtype=torch.float16),
          "c": torch.zeros(2, dtype=torch.float64), "d": torch.zeros(5, dtype=torch.uint8)}
    data = sio.save(ts, {"m": "v"})
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0 and data[8:8 + n].rstrip(b" ").endswith(b"}")
    header = json.loads(data[8:8 + n])
    assert list(header) == ["__metadata__", "c", "a", "b", "d"]  # widest dtype first, then by name
    assert header["c"]["data_offsets"] == [0, 16] and header["d"]["data_offsets"] == [24, 29]
    assert len(data) == 8 + n + 29 == sio.predicted_size(sio._specs(ts), {"m": "v"})


def test_roundtrip_every_dtype_without_reference(tmp_path):
    ts = _tensors()
    path = tmp_path / "all.safetensors"
    sio.save_file(ts, path)
    back = sio.load_file(path)
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))


def test_streaming_writer_asks_for_one_tensor_at_a_time():
    specs = [sio.TensorSpec(f"w{i}", torch.float32, (256,)) for i in range(5)]
    asked, calls = [], []

    def get(name):
        asked.append(name)
        return torch.full((256,), float(len(asked)))

    f = io.BytesIO()
    written = sio.write_safetensors(f, specs, get, {"k": "v"}, progress=lambda d, t: calls.append((d, t)))
    assert asked == [s.name for s in specs] and written == len(f.getvalue())
    assert calls[-1] == (written, written) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert torch.equal(ref.load(f.getvalue())["w3"], torch.full((256,), 4.0))


def test_writer_refuses_tensor_that_differs_from_its_declaration():
    spec = sio.TensorSpec("x", torch.float16, (2,))
    with pytest.raises(sio.SafetensorsError, match="declared"):
        sio.write_safetensors(io.BytesIO(), [spec], lambda _: torch.zeros(2))


def _raw(header: dict, data: bytes = b"", pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("blob", [
    _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # overlap
    _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),  # hole
    _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),  # data too short
    _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12)),  # data too long
    _raw({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),  # size vs dtype*shape
    _raw({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    _raw({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    _raw({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
    _raw({"__metadata__": {"k": 1}}),
    _raw([1, 2]),
    struct.pack("<Q", 10**9) + b"{}",
    struct.pack("<Q", 50) + b'{"a":1}',
    struct.pack("<Q", 4) + b"{!!}",
    struct.pack("<Q", 8) + b'{"a":1,"a":2}'[:8],
    b"abc",
    b"",
], ids=["overlap", "hole", "short", "long", "size", "negative", "dtype", "offsets", "metadata", "array",
        "huge-header", "header-past-end", "json", "cut-json", "tiny", "empty"])
def test_invalid_files_are_a_safetensors_error_naming_the_file(tmp_path, blob):
    """The package rejects these when the file is opened; Accel turns its error into SafetensorsError."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(sio.SafetensorsError, match=r"^bad\.safetensors: not a valid safetensors file: \S"):
        sio.SafetensorsFile(path)


def test_unreadable_path_is_a_safetensors_error_and_missing_file_stays_file_not_found(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(sio.SafetensorsError, match=r"^folder\.safetensors: "):  # the package's OSError
        sio.load_metadata(folder)
    with pytest.raises(FileNotFoundError):
        sio.load_file(tmp_path / "missing.safetensors")


def test_lazy_reader_reads_requested_tensor_only(tmp_path):
    path = tmp_path / "lazy.safetensors"
    sio.save_file({"big": torch.zeros(1000), "small": torch.arange(3)}, path, {"k": "v"})
    with sio.SafetensorsFile(path) as st:
        assert st.meta("big") == (torch.float32, (1000,)) and len(st) == 2 and st.metadata == {"k": "v"}
        assert "big" in st and "nope" not in st and set(st) == {"big", "small"}
        assert torch.equal(st["small"], torch.arange(3))
        with pytest.raises(KeyError):
            st["nope"]
        with pytest.raises(KeyError):
            st.meta("nope")
    with pytest.raises(sio.SafetensorsError, match=r"^lazy\.safetensors: tensor 'small': "):
        st["small"]  # closed: the package's error, wrapped
    assert sio.load_metadata(tmp_path / "lazy.safetensors") == {"k": "v"}
    sio.save_file({"x": torch.zeros(1)}, path)
    assert sio.load_metadata(path) == {}
