"""Checking a slimmed output: reload it and compare it with the plan and the source, tensor by tensor.

Contracts:

* Read-only: the output, the source (and a baked VAE) are only opened for reading, through the same
  opener as :func:`lib_accel.checkpoint.slim_write.run_slim`; nothing is written or removed.
* A tensor whose dtype was kept must be bit-identical to the source; a narrowed one must be within
  rounding of it (half an ulp of the output dtype, NaN matching NaN): :func:`values_match`.
* Mismatches are collected in a :class:`VerifyReport` rather than raised; an output that cannot be
  opened is a report with ``ok=False``. The output is read one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib_accel.checkpoint import safetensors_io
from lib_accel.checkpoint.loading import file_size, sha256_file
from lib_accel.checkpoint.slim_plan import Progress, SlimPlan, format_bytes
from lib_accel.checkpoint.slim_write import open_inputs


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str]
    identical: int  # tensors bit-identical to the source
    rounded: int  # narrowed tensors within rounding of the source
    source_bytes: int
    output_bytes: int
    predicted_bytes: int

    @property
    def checked(self) -> int:
        return self.identical + self.rounded

    def describe(self) -> list[str]:
        head = (f"verified {self.checked} tensors: OK ({self.identical} bit-identical to the source, "
                f"{self.rounded} narrowed and within rounding of it)" if self.ok
                else f"verification FAILED ({len(self.problems)} problems)")
        return [head, f"size: {format_bytes(self.source_bytes)} -> {format_bytes(self.output_bytes)} "
                f"(predicted {format_bytes(self.predicted_bytes)})", *self.problems[:20]]


def values_match(src: torch.Tensor, out: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """Unchanged dtype: bit-equal. Narrowed: within half an ulp of ``out``'s dtype, NaN matching NaN.

    Fast path: bit-equal to ``src`` rounded to ``out.dtype`` (round-to-nearest-even is within half an
    ulp); only otherwise is the tolerance checked value by value (slower, chunked).
    """
    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    if src.dtype == out.dtype or src.shape != out.shape:
        return src.shape == out.shape and torch.equal(bits(src), bits(out))
    if not (src.is_floating_point() and out.is_floating_point()):
        return False
    if torch.equal(bits(src.to(out.dtype)), bits(out)):
        return True
    info = torch.finfo(out.dtype)
    rel, tiny = info.eps / 2 * (1 + 1e-3), info.tiny * info.eps / 2
    work = torch.float64 if torch.float64 in (src.dtype, out.dtype) else torch.float32
    s, o = src.reshape(-1), out.reshape(-1)
    for i in range(0, s.numel(), chunk):
        a, b = s[i:i + chunk].to(work), o[i:i + chunk].to(work)
        good = (a == b) | ((a - b).abs() <= a.abs() * rel + tiny) | (a.isnan() & b.isnan())
        if not bool(good.all()):
            return False
    return True


def verify_slim(plan: SlimPlan, out_path: str | None = None, progress: Progress | None = None, *,
                check_source_hash: bool = True) -> VerifyReport:
    """Reload the output and check it against the plan and the source, tensor by tensor.

    Checks: keys, dtypes and shapes as planned; values equal (or within rounding when narrowed); the
    ``accel.*`` metadata present; and, with ``check_source_hash``, that the source still hashes to the
    sha256 recorded in the output (the original was not modified).
    """
    out_path = out_path or plan.output
    problems: list[str] = []
    counts, done = [0, 0], 0
    total = sum(t.nbytes for t in plan.tensors) + (plan.source_bytes if check_source_hash else 0)
    planned = {t.name: t for t in plan.tensors}
    try:
        out = safetensors_io.SafetensorsFile(out_path)
    except (OSError, safetensors_io.SafetensorsError) as e:
        return VerifyReport(False, [f"cannot read {out_path}: {e}"], 0, 0, plan.source_bytes, 0,
                            plan.predicted_bytes)
    with out, open_inputs(plan) as source_tensor:
        for label, keys in (("missing", planned.keys() - out.keys()), ("unexpected", out.keys() - planned)):
            if keys:
                problems.append(f"{len(keys)} {label} tensors, e.g. {sorted(keys)[0]}")
        for name in sorted(planned.keys() & out.keys()):
            t, (dtype, shape) = planned[name], out.meta(name)
            if dtype != t.dtype or shape != t.shape:
                problems.append(f"{name}: {dtype}{list(shape)}, planned {t.dtype}{list(t.shape)}")
                continue
            src = source_tensor(t)
            if values_match(src, out[name]):
                counts[src.dtype != t.dtype] += 1
            else:
                problems.append(f"{name}: values differ from the source beyond {t.dtype} rounding")
            done += t.nbytes
            if progress:
                progress(done, total)
        md = dict(out.metadata)
    required = ("accel.tool", "accel.source_file", "accel.dtype", "accel.source_sha256", "accel.dropped")
    problems += [f"metadata {key} is missing" for key in required if key not in md]
    recorded = md.get("accel.source_sha256")
    if check_source_hash and recorded:
        def hash_progress(d: int, _total: int) -> None:
            if progress:
                progress(done + d, total)

        if sha256_file(plan.source, hash_progress) != recorded:
            problems.append(f"{plan.source} no longer matches the sha256 recorded in the output")
    return VerifyReport(not problems, problems, *counts, plan.source_bytes, file_size(out_path),
                        plan.predicted_bytes)
