"""lib_accel.quality.image_diff: max abs pixel difference and PSNR (torch only; PIL used only if installed)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_accel.quality import image_diff
from lib_accel.quality.image_diff import compare_images, psnr, to_hwc_uint8


def _img(seed: int = 0, h: int = 8, w: int = 6, c: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_identical_images():
    a = _img()
    d = compare_images(a, a.clone())
    assert d.identical and d.max_abs == 0 and d.mean_abs == 0.0 and d.psnr_db == math.inf
    assert d.describe().startswith("identical")
    assert d.shape == (8, 6, 3)


def test_known_difference_and_psnr():
    a = torch.zeros((4, 4, 3), dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 10  # one value off by 10 out of 48: MSE = 100/48
    d = compare_images(a, b)
    assert not d.identical and d.max_abs == 10
    assert d.mean_abs == pytest.approx(10 / 48)
    assert d.psnr_db == pytest.approx(10 * math.log10(255**2 / (100 / 48)))
    assert "10/255" in d.describe() and "dB" in d.describe()


def test_no_uint8_wraparound():
    a = torch.full((2, 2, 1), 0, dtype=torch.uint8)
    b = torch.full((2, 2, 1), 255, dtype=torch.uint8)
    d = compare_images(a, b)
    assert d.max_abs == 255 and d.psnr_db == pytest.approx(0.0)
    assert compare_images(b, a).max_abs == 255


def test_psnr_helper():
    assert psnr(0.0) == math.inf
    assert psnr(255.0**2) == pytest.approx(0.0)
    assert psnr(1.0, peak=1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        psnr(-1.0)


def test_float_chw_and_hwc_tensors_are_scaled():
    hwc = _img(1)
    chw_float = hwc.permute(2, 0, 1).float() / 255.0
    assert torch.equal(to_hwc_uint8(chw_float), hwc)
    assert torch.equal(to_hwc_uint8(hwc.float() / 255.0), hwc)
    assert compare_images(hwc, chw_float).identical
    assert to_hwc_uint8(torch.full((2, 2, 3), 2.0)).max() == 255  # clamped


def test_grayscale_2d_and_errors():
    g = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    assert to_hwc_uint8(g).shape == (3, 4, 1)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_images(_img(h=8), _img(h=7))
    with pytest.raises(ValueError):
        to_hwc_uint8(torch.zeros(1, 2, 3, 4, dtype=torch.uint8))
    with pytest.raises(TypeError):
        to_hwc_uint8([[1, 2]])
    with pytest.raises(TypeError):
        to_hwc_uint8(torch.zeros(2, 2, 3, dtype=torch.int64))


class _FakePIL:
    """Duck-typed stand-in for a PIL image (mode, size, tobytes, convert)."""

    def __init__(self, tensor: torch.Tensor, mode: str = "RGB"):
        self.t, self.mode = tensor, mode
        self.size = (tensor.shape[1], tensor.shape[0])

    def tobytes(self) -> bytes:
        return bytes(self.t.flatten().tolist())

    def convert(self, mode: str) -> _FakePIL:
        assert mode == "RGB"
        return _FakePIL(self.t[..., :3], "RGB")


def test_pil_like_images():
    a = _img(2)
    assert torch.equal(to_hwc_uint8(_FakePIL(a)), a)
    cmyk = _FakePIL(_img(3, c=4), mode="CMYK")
    assert to_hwc_uint8(cmyk).shape == (8, 6, 3)
    assert compare_images(_FakePIL(a), a).identical


def test_real_pil_if_available():
    pil = pytest.importorskip("PIL.Image")
    a = _img(4)
    img = pil.frombytes("RGB", (6, 8), bytes(a.flatten().tolist()))
    assert torch.equal(to_hwc_uint8(img), a)
    b = a.clone()
    b[1, 2, 0] ^= 1
    d = compare_images(img, b)
    assert d.max_abs == 1 and d.psnr_db > 40


def test_module_imports_neither_numpy_nor_pil():
    code = ("import sys; import lib_accel.quality.image_diff; "
            "print(any(m == 'PIL' or m.startswith('PIL.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(image_diff.__file__).parents[2]))
    assert out.stdout.strip() == "False"
    src = Path(image_diff.__file__).read_text(encoding="utf8")
    assert "import numpy" not in src and "from PIL" not in src and "import PIL" not in src
