"""A hostile safetensors header that nests JSON deeply is a clean format error, not a RecursionError.

The ``safetensors`` package parses headers with serde_json, whose nesting limit (128) refuses this file at once
(checked with 0.4.2, which WebUI v1.10.1 pins, and 0.8); its message differs between versions ("recursion limit
exceeded" / "InvalidHeaderDeserialization"), so the tests check Accel's wrapping of it, which names the file.
"""

from __future__ import annotations

import struct

import pytest

from lib_accel.checkpoint import safetensors_io
from lib_accel.checkpoint import slim_plan as slim
from lib_accel.checkpoint.loading import CheckpointFormatError, load_checkpoint


def _deep_header_file(path, depth: int = 100_000) -> str:
    text = ('{"a":' + "[" * depth + "]" * depth + "}").encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    return str(path)


def test_reader_refuses_deep_nesting_as_a_format_error(tmp_path):
    path = _deep_header_file(tmp_path / "deep.safetensors")
    with pytest.raises(safetensors_io.SafetensorsError, match=r"^deep\.safetensors: not a valid safetensors file: \S"):
        safetensors_io.load_metadata(path)
    with pytest.raises(CheckpointFormatError, match=r"^deep\.safetensors: not a valid safetensors file: \S"):
        load_checkpoint(path)


def test_slim_plan_reports_deep_nesting_as_a_value_error(tmp_path):
    path = _deep_header_file(tmp_path / "deep.safetensors")
    with pytest.raises(ValueError, match="deep.safetensors: not a valid safetensors file"):
        slim.plan_slim(path)
