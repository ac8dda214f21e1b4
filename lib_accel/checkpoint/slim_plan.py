"""Checkpoint slimming, the planning stage: what to drop, what to downcast, how large the output will be.

Contracts:

* The source (and a baked VAE) is only ever opened read-only, and never unpickled unsafely
  (:mod:`lib_accel.checkpoint.loading`). The output is never the source (symlinks and hard links included);
  an existing output is replaced only with ``overwrite=True``.
* Floats are only narrowed (F32/F64 -> F16/BF16). Integers, bools, fp8 and same-width floats (a BF16
  tensor when F16 is asked for) are kept; so are top-level schedule buffers without a dot in the name
  (``alphas_cumprod``, ``betas``, ...): tiny, and sampling reads them at full precision.
* EMA is ``model_ema.*``. The WebUI samples with the non-EMA ``model.diffusion_model.*`` weights, so the
  EMA copy is dead weight for it; it is dropped by default. Entries outside the model state dict
  (optimizer state, callbacks, loops, ...) are always dropped.
* Planning reads headers/pickles only and writes nothing. Plan, run and verify each reopen the source;
  cheap with mmap.
* Writing a plan out (atomic temp file + rename, free-space check) is :mod:`lib_accel.checkpoint.slim_write`;
  checking a written output against the plan and the source is :mod:`lib_accel.checkpoint.slim_verify`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lib_accel import __version__
from lib_accel.checkpoint import safetensors_io
from lib_accel.checkpoint.loading import file_size, load_checkpoint, tensor_meta

DTYPES: dict[str, torch.dtype | None] = {"fp16": torch.float16, "bf16": torch.bfloat16, "keep": None}
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
DISK_MARGIN = 64 * 1024 * 1024
TOOL = "accel slim"
Progress = Callable[[int, int], None]


class SlimError(Exception):
    """A slimming request that cannot be carried out as asked."""


class OutputExistsError(SlimError):
    pass


class NotEnoughDiskError(SlimError):
    def __init__(self, message: str, needed: int, free: int) -> None:
        super().__init__(message)
        self.needed, self.free = needed, free


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    origin: str  # "checkpoint" or "vae": which file the data comes from
    source_key: str
    source_dtype: torch.dtype
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return safetensors_io.TensorSpec(self.name, self.dtype, self.shape).nbytes


@dataclass
class SlimPlan:
    source: str
    output: str
    dtype: str
    drop_ema: bool
    vae: str | None
    overwrite: bool
    tensors: list[PlannedTensor]
    dropped: dict[str, list[str]]  # category ("ema", "optimizer", "training", "vae-replaced") -> keys
    dropped_bytes: dict[str, int]
    extras: dict[str, str]  # non-tensor entries that are not carried over
    notes: list[str]
    source_bytes: int
    predicted_bytes: int
    source_metadata: dict[str, str] = field(default_factory=dict)
    loader: str = ""

    @property
    def kept_keys(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def dropped_keys(self) -> list[str]:
        return sorted(k for keys in self.dropped.values() for k in keys)

    def problems(self) -> list[str]:
        """What :func:`.slim_write.run_slim` would refuse right now (output exists, not enough disk)."""
        out = []
        for check in (check_output, check_disk):
            try:
                check(self)
            except SlimError as e:
                out.append(str(e))
        return out

    def describe(self) -> list[str]:
        pct = 100 * self.predicted_bytes / max(self.source_bytes, 1)
        lines = [f"{os.path.basename(self.source)} ({format_bytes(self.source_bytes)}) -> {self.output}",
                 f"keep {len(self.tensors)} tensors, dtype {self.dtype}: "
                 f"{format_bytes(self.predicted_bytes)} ({pct:.0f}% of the original)"]
        for cat, keys in self.dropped.items():
            lines.append(f"drop {len(keys)} {cat} tensors ({format_bytes(self.dropped_bytes[cat])}): "
                         + ", ".join(_prefixes(keys)))
        if self.extras:
            shown = list(self.extras.items())[:8]
            lines.append("not carried over: " + ", ".join(f"{k} ({v})" for k, v in shown))
        return lines + self.notes


def derive_output_path(source: str, dtype: str = "fp16", vae: str | None = None) -> str:
    """``dir/name.slim-fp16[-vae].safetensors`` next to ``source``; never the source's own name."""
    folder, base = os.path.split(os.path.abspath(source))
    stem = base.rsplit(".", 1)[0] if "." in base else base
    tag = "slim" + (f"-{dtype}" if dtype != "keep" else "") + ("-vae" if vae else "")
    return os.path.join(folder, f"{stem}.{tag}.safetensors")  # one dot-component longer than the source


def same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _prefixes(keys: list[str], limit: int = 6) -> list[str]:
    seen = sorted({k.split(".", 1)[0] + ("." if "." in k else "") for k in keys})
    return seen[:limit] + ([f"... {len(seen) - limit} more"] if len(seen) > limit else [])


def _target_dtype(name: str, src: torch.dtype, target: torch.dtype | None) -> torch.dtype:
    if target is None or not src.is_floating_point or "." not in name:
        return src
    narrower = torch.empty((), dtype=target).element_size() < torch.empty((), dtype=src).element_size()
    return target if narrower else src


def _vae_keys(vae_ckpt: object) -> dict[str, str]:
    """VAE tensor names without the ``first_stage_model.`` prefix -> key in the VAE file."""
    keys = list(vae_ckpt.tensors)
    if any(k.startswith(VAE_PREFIX) for k in keys):
        return {k[len(VAE_PREFIX):]: k for k in keys if k.startswith(VAE_PREFIX)}
    return {k: k for k in keys if not k.startswith(("loss.", EMA_PREFIX))}


def plan_slim(source: str, *, dtype: str = "fp16", drop_ema: bool = True, vae: str | None = None,
              output: str | None = None, overwrite: bool = False) -> SlimPlan:
    """Decide what to keep/drop and predict the output size; reads headers/pickles, writes nothing.

    Raises FileNotFoundError, UnsafeCheckpointError, CheckpointFormatError or SlimError for requests
    that can never work (output is the source or not .safetensors, VAE does not fit). Conditions that
    may change before the run (output exists, disk space) are reported by :meth:`SlimPlan.problems`.
    """
    if dtype not in DTYPES:
        raise SlimError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    source = os.path.abspath(source)
    output = os.path.abspath(output) if output else derive_output_path(source, dtype, vae)
    if same_file(source, output) or (vae and same_file(vae, output)):
        raise SlimError(f"output {output} is an input file; choose another --out")
    if not output.lower().endswith(".safetensors"):
        raise SlimError(f"output {output} must end in .safetensors (the WebUI picks the loader by extension)")
    if not os.path.isdir(os.path.dirname(output)):
        raise SlimError(f"output folder {os.path.dirname(output)} does not exist")
    target = DTYPES[dtype]
    dropped: dict[str, list[str]] = {}
    dropped_bytes: dict[str, int] = {}
    kept: list[PlannedTensor] = []

    def drop(cat: str, key: str, dt: torch.dtype, shape: tuple[int, ...]) -> None:
        dropped.setdefault(cat, []).append(key)
        dropped_bytes[cat] = dropped_bytes.get(cat, 0) + safetensors_io.TensorSpec(key, dt, shape).nbytes

    with load_checkpoint(source) as ckpt:
        entries = [(k, *tensor_meta(ckpt, k), False) for k in ckpt.tensors]
        entries += [(k, t.dtype, tuple(t.shape), True) for k, t in ckpt.other_tensors.items()]
        names: set[str] = set()
        for key, dt, shape, outside in entries:
            if key.startswith(EMA_PREFIX) and drop_ema:
                drop("ema", key, dt, shape)
            elif (outside and not key.startswith(EMA_PREFIX)) or key in names:
                drop("optimizer" if "optim" in key.split(".", 1)[0] else "training", key, dt, shape)
            else:
                names.add(key)
                kept.append(PlannedTensor(key, "checkpoint", key, dt, _target_dtype(key, dt, target), shape))
        extras, metadata, loader = dict(ckpt.extras), dict(ckpt.metadata), ckpt.loader
    if not kept:
        raise SlimError(f"{os.path.basename(source)}: no model tensors left to keep")
    notes = []
    if vae:
        kept, notes = _plan_vae(kept, vae, target, drop)
    same = sum(t.source_dtype.is_floating_point and t.dtype == t.source_dtype != target for t in kept)
    if target is not None and same:
        notes.append(f"{same} float tensor(s) keep their dtype: same width as {dtype} or narrower, or "
                     "schedule buffers such as alphas_cumprod")
    plan = SlimPlan(source, output, dtype, drop_ema, os.path.abspath(vae) if vae else None, overwrite, kept,
                    dropped, dropped_bytes, extras, notes, file_size(source), 0, metadata, loader)
    placeholder = build_metadata(plan, "0" * 64, "0" * 64)  # same length as the real hashes
    plan.predicted_bytes = safetensors_io.predicted_size(tensor_specs(plan), placeholder)
    if plan.predicted_bytes > 0.95 * plan.source_bytes:
        notes.append("little to gain: the output would be about as large as the source")
    return plan


def _plan_vae(kept: list[PlannedTensor], vae: str, target: torch.dtype | None, drop: Callable,
              ) -> tuple[list[PlannedTensor], list[str]]:
    with load_checkpoint(vae) as vae_ckpt:
        mapping = _vae_keys(vae_ckpt)
        meta = {k: tensor_meta(vae_ckpt, src) for k, src in mapping.items()}
    current = {t.name[len(VAE_PREFIX):]: t for t in kept if t.name.startswith(VAE_PREFIX)}
    missing = sorted(set(current) - set(mapping))
    if missing:
        raise SlimError(f"{os.path.basename(vae)} lacks {len(missing)} of the checkpoint's {len(current)} "
                        f"VAE tensors (e.g. {missing[0]}); is it a VAE for this model (diffusers layout is "
                        "not supported)?")
    for k, t in current.items():
        if tuple(meta[k][1]) != t.shape:
            raise SlimError(f"{os.path.basename(vae)}: {k} has shape {list(meta[k][1])}, the checkpoint "
                            f"{list(t.shape)}; this VAE does not fit this model")
    for t in current.values():
        drop("vae-replaced", t.name, t.source_dtype, t.shape)
    take = sorted(current) if current else sorted(mapping)
    baked = [PlannedTensor(VAE_PREFIX + k, "vae", mapping[k], meta[k][0], _target_dtype(VAE_PREFIX + k,
                                                                                     meta[k][0], target),
                           tuple(meta[k][1])) for k in take]
    notes = [f"baked {len(baked)} VAE tensors from {os.path.basename(vae)}"]
    if len(mapping) > len(take):
        notes.append(f"ignored {len(mapping) - len(take)} VAE tensors the checkpoint has no place for")
    return [t for t in kept if not t.name.startswith(VAE_PREFIX)] + baked, notes


def tensor_specs(plan: SlimPlan) -> list[safetensors_io.TensorSpec]:
    """The output's tensors in plan order, with their planned (output) dtypes."""
    return [safetensors_io.TensorSpec(t.name, t.dtype, t.shape) for t in plan.tensors]


def build_metadata(plan: SlimPlan, source_sha256: str, vae_sha256: str = "") -> dict[str, str]:
    """Header metadata: the source's own entries, then ``accel.*`` provenance (what, from where, how)."""
    md = dict(plan.source_metadata)
    md.setdefault("format", "pt")
    dropped = {cat: {"count": len(keys), "bytes": plan.dropped_bytes[cat], "prefixes": _prefixes(keys, 20)}
               for cat, keys in plan.dropped.items()}
    md.update({"accel.tool": TOOL, "accel.version": __version__, "accel.dtype": plan.dtype,
               "accel.source_file": os.path.basename(plan.source),
               "accel.source_bytes": str(plan.source_bytes), "accel.source_sha256": source_sha256,
               "accel.dropped": json.dumps(dropped, sort_keys=True)})
    if plan.extras:
        md["accel.dropped_extras"] = json.dumps(sorted(plan.extras))
    if plan.vae:
        md.update({"accel.vae_file": os.path.basename(plan.vae), "accel.vae_sha256": vae_sha256})
    return md


def check_output(plan: SlimPlan) -> None:
    """SlimError if the output is an input file; OutputExistsError if it exists and ``overwrite`` is off."""
    if same_file(plan.source, plan.output) or (plan.vae and same_file(plan.vae, plan.output)):
        raise SlimError(f"output {plan.output} is an input file; refusing to overwrite it")
    if os.path.lexists(plan.output) and not plan.overwrite:
        raise OutputExistsError(f"output exists: {plan.output} (pass --overwrite or choose --out)")


def check_disk(plan: SlimPlan) -> None:
    """NotEnoughDiskError unless the output folder has the predicted size plus a margin free."""
    folder = os.path.dirname(plan.output)
    margin = max(DISK_MARGIN, plan.predicted_bytes // 100)
    needed, free = plan.predicted_bytes + margin, shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughDiskError(f"not enough free disk space in {folder}: needs {format_bytes(needed)} "
                                 f"({format_bytes(plan.predicted_bytes)} output + {format_bytes(margin)} "
                                 f"margin), {format_bytes(free)} free", needed, free)
