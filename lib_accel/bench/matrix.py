"""The benchmark matrix: which options to vary, expanded into cells (torch-free, stdlib only).

Axes: attention (an optimizer title or kernel name, as the target understands it; in the WebUI "Automatic" is
a cell too, reported with what it resolved to), compile (``off`` or a compile mode), channels-last (off/on),
UNet precision and VAE precision (``default`` or a dtype name), sizes, batch sizes and step counts. The first
value of each option axis forms the baseline: every cell's image is compared with the baseline cell of the
same size, batch and steps (only those are comparable pixel for pixel).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field

SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "512x512": (512, 512), "768x768": (768, 768), "1024x1024": (1024, 1024), "1024x768": (1024, 768),
}
COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISION_CHOICES = ("default", "fp16", "bf16", "fp32")
MAX_CELLS = 512

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×*]\s*(\d+)\s*$")


class MatrixError(ValueError):
    """A matrix that cannot be run, with the reason."""


@dataclass(frozen=True)
class Cell:
    attention: str
    compile: str = "off"
    channels_last: bool = False
    precision: str = "default"
    width: int = 512
    height: int = 512
    batch: int = 1
    steps: int = 20
    vae: str = "default"  # VAE precision (last, so positional construction keeps its meaning)

    @property
    def shape_key(self) -> tuple[int, int, int, int]:
        """Cells with the same shape key render comparable images."""
        return (self.width, self.height, self.batch, self.steps)

    @property
    def options_key(self) -> tuple[str, str, bool, str, str]:
        return (self.attention, self.compile, self.channels_last, self.precision, self.vae)

    def label(self, attention: str | None = None) -> str:
        """Short human label of the option part, e.g. ``SDPA · compile default · CL · bf16 · VAE bf16``;
        ``attention`` replaces the attention name (e.g. "Automatic (InvokeAI)", what it resolved to)."""
        parts = [attention or self.attention]
        if self.compile != "off":
            parts.append(f"compile {self.compile}")
        if self.channels_last:
            parts.append("channels-last")
        if self.precision != "default":
            parts.append(self.precision)
        if self.vae != "default":
            parts.append(f"VAE {self.vae}")
        return " · ".join(parts)

    def size_label(self) -> str:
        return f"{self.width}x{self.height} b{self.batch} {self.steps} steps"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Matrix:
    attention: tuple[str, ...]
    compile: tuple[str, ...] = ("off",)
    channels_last: tuple[bool, ...] = (False,)
    precision: tuple[str, ...] = ("default",)
    vae: tuple[str, ...] = ("default",)
    sizes: tuple[tuple[int, int], ...] = ((512, 512),)
    batches: tuple[int, ...] = (1,)
    steps: tuple[int, ...] = (20,)
    extra: dict = field(default_factory=dict, compare=False)

    def validate(self) -> None:
        """Raise :class:`MatrixError` naming the first bad axis."""
        for name in ("attention", "compile", "channels_last", "precision", "vae", "sizes", "batches", "steps"):
            values = getattr(self, name)
            if not values:
                raise MatrixError(f"choose at least one value for {name.replace('_', ' ')}")
            if len(set(values)) != len(values):
                raise MatrixError(f"{name.replace('_', ' ')} lists a value twice: {list(values)}")
        for mode in self.compile:
            if mode not in COMPILE_CHOICES:
                raise MatrixError(f"unknown compile choice {mode!r} (one of {', '.join(COMPILE_CHOICES)})")
        for axis, values in (("precision", self.precision), ("VAE precision", self.vae)):
            for p in values:
                if p not in PRECISION_CHOICES:
                    raise MatrixError(f"unknown {axis} {p!r} (one of {', '.join(PRECISION_CHOICES)})")
        for w, h in self.sizes:
            if w < 64 or h < 64 or w % 8 or h % 8:
                raise MatrixError(f"size {w}x{h}: width and height must be multiples of 8, at least 64")
        if any(b < 1 or b > 64 for b in self.batches):
            raise MatrixError(f"batch sizes must be 1..64, got {list(self.batches)}")
        if any(s < 1 or s > 500 for s in self.steps):
            raise MatrixError(f"steps must be 1..500, got {list(self.steps)}")
        n = self.size()
        if n > MAX_CELLS:
            raise MatrixError(f"{n} cells is more than {MAX_CELLS}; choose fewer values")

    def size(self) -> int:
        n = 1
        for values in (self.attention, self.compile, self.channels_last, self.precision, self.vae, self.sizes,
                       self.batches, self.steps):
            n *= len(values)
        return n

    def cells(self) -> list[Cell]:
        """All cells, ordered so that expensive switches happen least: precision varies slowest (narrowing and
        widening the UNet or VAE can mean a weight reload), then compile, channels-last, the shapes, and attention
        fastest. The first cell of each shape has the baseline options (the first value of every axis)."""
        self.validate()
        out = []
        for prec, vae, comp, cl in itertools.product(self.precision, self.vae, self.compile, self.channels_last):
            for (w, h), batch, steps in itertools.product(self.sizes, self.batches, self.steps):
                for att in self.attention:
                    out.append(Cell(att, comp, cl, prec, w, h, batch, steps, vae=vae))
        return out

    def baseline_options(self) -> tuple[str, str, bool, str, str]:
        return (self.attention[0], self.compile[0], self.channels_last[0], self.precision[0], self.vae[0])


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``"512x512, 1024x768"`` -> ``((512, 512), (1024, 768))``; MatrixError on junk."""
    sizes = []
    for item in (t for t in re.split(r"[,;\s]+", text.strip()) if t):
        m = _SIZE.match(item)
        if not m:
            raise MatrixError(f"size {item!r} is not WIDTHxHEIGHT (e.g. 512x768)")
        sizes.append((int(m.group(1)), int(m.group(2))))
    if not sizes:
        raise MatrixError("no sizes given")
    return tuple(sizes)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"1, 2 4"`` -> ``(1, 2, 4)``; MatrixError naming ``what`` on junk."""
    values = []
    for item in (t for t in re.split(r"[,;\s]+", str(text).strip()) if t):
        try:
            values.append(int(item))
        except ValueError:
            raise MatrixError(f"{what}: {item!r} is not a whole number") from None
    if not values:
        raise MatrixError(f"no {what} given")
    return tuple(values)


def parse_bools(values: list[str] | tuple[str, ...]) -> tuple[bool, ...]:
    """UI choices ``["off", "on"]`` -> ``(False, True)``."""
    table = {"off": False, "on": True, "false": False, "true": True}
    try:
        return tuple(table[str(v).lower()] for v in values)
    except KeyError as e:
        raise MatrixError(f"channels-last choice {e.args[0]!r} is not on/off") from None


ATTENTION_OPTION = "cross_attention_optimization"  # the WebUI's setting (v1.6+); values are optimizer titles
AUTOMATIC = "Automatic"  # the setting's default: the WebUI picks an optimizer (InvokeAI on CPU, Doggettx on CUDA)


def check_applied(cell: Cell, active: str | None) -> str | None:
    """What the WebUI runs for ``cell.attention`` given the optimizer it now reports ``active``: the resolved
    title for "Automatic", None when the named one is active; CellSkipped's reason text otherwise (ValueError)."""
    if cell.attention == AUTOMATIC:
        return active or "none"
    if active != cell.attention:
        raise ValueError(f"the WebUI applied {active!r} instead of {cell.attention!r}")
    return None


def cell_settings(cell: Cell, checkpoint_title: str | None) -> dict:
    """The WebUI settings (``/sdapi/v1/options`` keys) that put the WebUI in ``cell``'s configuration; the same
    dict is what "apply best" writes. Compile runs inline (no background, no pre-warm) so the warm-up run
    carries the compile and the timed runs are compiled."""
    out = {ATTENTION_OPTION: cell.attention,
           "accel_channels_last": "on" if cell.channels_last else "off",
           "accel_unet_dtype": cell.precision,
           "accel_vae_dtype": cell.vae,
           "accel_compile_enabled": cell.compile != "off"}
    if cell.compile != "off":
        out.update({"accel_compile_mode": cell.compile, "accel_compile_background": False,
                    "accel_compile_prewarm": "",
                    "accel_compile_checkpoints": [checkpoint_title] if checkpoint_title else []})
    return out
