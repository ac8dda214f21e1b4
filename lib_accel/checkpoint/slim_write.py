"""Checkpoint slimming, the writing stage: carry out a :class:`lib_accel.checkpoint.slim_plan.SlimPlan`.

Contracts:

* The source (and a baked VAE) is only opened read-only, through :func:`open_inputs` (the same opener
  :mod:`lib_accel.checkpoint.slim_verify` uses). The output is never an input and an existing output is replaced
  only with ``overwrite=True``; both are checked again right before writing.
* :func:`run_slim` writes a hidden temp file in the output folder and renames it into place atomically
  (without ``overwrite`` through a hard link, so a file that appears meanwhile is not replaced either):
  the output appears complete or not at all, and any error or interruption (KeyboardInterrupt included)
  removes the temp file. It refuses up front when free space is below the predicted size plus a margin.
* Memory: one source copy at most (zip checkpoints are memory-mapped, safetensors read per tensor) plus
  one converted tensor at a time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass

import torch

from lib_accel.checkpoint import safetensors_io
from lib_accel.checkpoint.loading import file_size, load_checkpoint, sha256_file
from lib_accel.checkpoint.slim_plan import (
    OutputExistsError,
    PlannedTensor,
    Progress,
    SlimError,
    SlimPlan,
    build_metadata,
    check_disk,
    check_output,
    format_bytes,
    tensor_specs,
)


@dataclass
class SlimResult:
    output: str
    bytes_written: int
    source_bytes: int
    source_sha256: str
    seconds: float

    def describe(self) -> str:
        saved = 100 * (1 - self.bytes_written / max(self.source_bytes, 1))
        return (f"wrote {self.output}: {format_bytes(self.source_bytes)} -> "
                f"{format_bytes(self.bytes_written)} ({saved:.0f}% smaller) in {self.seconds:.1f} s")


def convert(t: torch.Tensor, planned: PlannedTensor) -> torch.Tensor:
    """The source tensor in its planned dtype; SlimError if narrowing overflows (fp16 tops out at 65504)."""
    if tuple(t.shape) != planned.shape or t.dtype != planned.source_dtype:
        raise SlimError(f"{planned.name} changed since planning ({t.dtype}{list(t.shape)}); plan again")
    if t.dtype == planned.dtype:
        return t
    out = t.to(planned.dtype)
    if torch.isinf(out).any() and (torch.isinf(out) & torch.isfinite(t)).any():
        raise SlimError(f"{planned.name}: values overflow {planned.dtype}; use --dtype bf16 or keep")
    return out


@contextlib.contextmanager
def open_inputs(plan: SlimPlan):
    """Yields ``source_tensor(planned) -> Tensor`` over the opened source (and VAE); closes them after."""
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(load_checkpoint(plan.source))
        vae = stack.enter_context(load_checkpoint(plan.vae)) if plan.vae else None

        def source_tensor(t: PlannedTensor) -> torch.Tensor:
            src = vae if t.origin == "vae" else ckpt
            key = t.source_key
            return src.tensors[key] if key in src.tensors else src.other_tensors[key]

        yield source_tensor


def _move_into_place(tmp: str, output: str, overwrite: bool) -> None:
    """Atomic rename; without ``overwrite`` via a hard link, so a file that appeared meanwhile survives."""
    if overwrite:
        os.replace(tmp, output)
        return
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise OutputExistsError(f"output exists: {output} (it appeared while writing)") from None
    except OSError:  # no hard links on this filesystem (FAT, some network shares): check, then rename
        if os.path.lexists(output):
            raise OutputExistsError(f"output exists: {output} (it appeared while writing)") from None
        os.replace(tmp, output)
        return
    os.unlink(tmp)


def _temp_file(folder: str, base: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.accel-tmp")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def run_slim(plan: SlimPlan, progress: Progress | None = None) -> SlimResult:
    """Carry out ``plan``: hash the source, stream the output to a temp file, then move it into place.

    ``progress(done_bytes, total_bytes)`` covers hashing the inputs and writing the output. Raises
    OutputExistsError, NotEnoughDiskError or SlimError before writing anything when the plan cannot run.
    """
    start = time.monotonic()
    check_output(plan)
    if file_size(plan.source) != plan.source_bytes:
        raise SlimError(f"{plan.source} changed size since planning; plan again")
    check_disk(plan)
    inputs = [plan.source] + ([plan.vae] if plan.vae else [])
    total = sum(file_size(p) for p in inputs) + plan.predicted_bytes
    base = 0

    def report(done: int, _total: int) -> None:
        if progress:
            progress(base + done, total)

    hashes = []
    for p in inputs:
        hashes.append(sha256_file(p, report))
        base += file_size(p)
    metadata = build_metadata(plan, *hashes)
    by_name = {t.name: t for t in plan.tensors}
    with open_inputs(plan) as source_tensor:
        fd, tmp = _temp_file(os.path.dirname(plan.output), os.path.basename(plan.output))
        try:
            with os.fdopen(fd, "wb") as f:
                written = safetensors_io.write_safetensors(
                    f, tensor_specs(plan), lambda name: convert(source_tensor(by_name[name]), by_name[name]),
                    metadata, report)
                f.flush()
                os.fsync(f.fileno())
            _move_into_place(tmp, plan.output, plan.overwrite)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return SlimResult(plan.output, written, plan.source_bytes, hashes[0], time.monotonic() - start)
