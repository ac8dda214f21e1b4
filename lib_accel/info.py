"""What Accel can use on this machine, and why not: the data behind ``python -m lib_accel info``."""

from __future__ import annotations

import platform
import sys

import torch

from . import __version__, features
from .attention import describe_kernels


def default_device() -> torch.device:
    return torch.device("cuda") if features.cuda().available else torch.device("cpu")


def notes(device: torch.device | None, cpuinfo: str | None = None) -> list[str]:
    """Advice about this machine that changes what to choose (shown by ``info`` and the Accel tab)."""
    from .runtime.precision import cpu_bf16_note
    note = cpu_bf16_note(cpuinfo) if getattr(device, "type", None) == "cpu" else None
    return [f"bf16 on CPU: {note}; keep UNet/VAE precision at fp32 here"] if note else []


def collect() -> dict:
    device = default_device()
    return {
        "accel": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": features.device_label(device),
        "features": [f.as_dict() for f in features.all_features()],
        "kernels": describe_kernels(),
        "notes": notes(device),
    }


def format_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def render(info: dict) -> str:
    head = (f"Accel {info['accel']} | Python {info['python']} | torch {info['torch']} | {info['platform']}\n"
            f"Device: {info['device']}\n")
    feats = format_table([[f["name"], "yes" if f["available"] else "no", f["version"] or "-", f["reason"] or "-"]
                          for f in info["features"]], ["feature", "available", "version", "reason"])
    kernels = format_table([[k["name"], "yes" if k["available"] else "no", k["label"], "; ".join(k["reasons"]) or "-"]
                            for k in info["kernels"]], ["kernel", "available", "what", "why not"])
    advice = "".join(f"\nNote: {n}\n" for n in info.get("notes", []))
    return f"{head}\n{feats}\n\n{kernels}\n{advice}"
