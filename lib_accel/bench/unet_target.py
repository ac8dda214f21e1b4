"""A benchmark target that needs no WebUI: the SD1.5-shaped UNet of :mod:`.unet_model` with random weights.

``apply(cell)`` sets the attention kernel (a name from :mod:`lib_accel.attention`'s registry, or
``webui-default``: an emulation of what the WebUI's "Automatic" runs on this device, as in ``bench
attention``), channels-last, the weights' dtype and torch.compile; what cannot run here raises
:class:`~.engine.CellSkipped` with the reason. ``generate(cell, seed)`` runs ``cell.steps`` UNet forwards
as an Euler-like denoising loop (one forward per step at the cell's batch, no classifier-free guidance,
so a WebUI step costs about two of these) on seeded latents and a seeded random context, and renders
the final latents as an 8-bit image so the engine's image differences mean something.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import torch

from .. import features
from ..attention import KernelUnsupported, all_kernels, get_kernel
from ..attention.base import AttentionCall, AttentionKernel
from .engine import CellSkipped, Generation
from .matrix import Cell
from .unet_model import UNet, UNetConfig, build_unet, parameter_count

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEBUI_DEFAULT = "webui-default"
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
SIGMA_MAX, SIGMA_MIN = 14.6146, 0.0292  # SD1.5's noise range
#: latents / SIGMA_MAX in [-RENDER_BOUND, RENDER_BOUND] map to 0..255 (fixed, so images compare across cells)
RENDER_BOUND = 2.0
#: a reduced precision whose probe runs more than this many times slower than fp32 is skipped
MAX_SLOWDOWN = 4.0


def attention_names(device: torch.device | str = "cpu") -> list[str]:
    """Every registry kernel that can run on ``device``'s type (before per-shape checks)."""
    kind = torch.device(device).type
    return [k.name for k in all_kernels() if k.is_available() and not (kind != "cuda" and _cuda_only(k))]


def known_attention_names() -> list[str]:
    return [k.name for k in all_kernels()] + [WEBUI_DEFAULT]


def _cuda_only(kernel: AttentionKernel) -> bool:
    probe = AttentionCall("cpu", None, torch.float32, 1, 1, 64, 64, 40, 40, False)
    return bool(kernel.call_reasons(probe))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``default`` is fp16 on CUDA and fp32 elsewhere (what the WebUI runs without ``--no-half``)."""
    if precision == "default":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[precision]


def attention_calls(config: UNetConfig, cell: Cell, device: torch.device, dtype: torch.dtype) -> list[AttentionCall]:
    """The distinct attention calls one UNet forward makes at the cell's size and batch."""
    h, w = cell.height // 8, cell.width // 8
    calls = []
    last = len(config.channel_mult) - 1
    for level in sorted(set(config.attention_levels) | {last}):
        tokens = (h >> level) * (w >> level)
        dim = config.model_channels * config.channel_mult[level] // config.num_heads
        for kv in (tokens, config.context_tokens):
            calls.append(AttentionCall(device.type, device.index, dtype, cell.batch, config.num_heads, tokens, kv,
                                       dim, dim, False))
    return calls


def render_latents(latents: torch.Tensor, upscale: int = 8) -> torch.Tensor:
    """The first sample's first three latent channels as an ``HxWx3`` uint8 image, ``upscale``-times
    nearest-neighbour enlarged. Fixed bounds (:data:`RENDER_BOUND`); any NaN or inf makes it all black."""
    x = latents[0, :3].detach().float().cpu()
    if not bool(torch.isfinite(x).all()):
        x = torch.zeros_like(x)
    else:
        x = ((x / SIGMA_MAX + RENDER_BOUND) / (2 * RENDER_BOUND)).clamp(0, 1).mul(255).round()
    image = x.to(torch.uint8).permute(1, 2, 0)
    if upscale > 1:
        image = image.repeat_interleave(upscale, 0).repeat_interleave(upscale, 1)
    return image.contiguous()


def sigma_schedule(steps: int) -> list[float]:
    """Geometric from SIGMA_MAX to SIGMA_MIN over ``steps`` values, then 0."""
    if steps == 1:
        return [SIGMA_MAX, 0.0]
    ratio = (SIGMA_MIN / SIGMA_MAX) ** (1.0 / (steps - 1))
    return [SIGMA_MAX * ratio ** i for i in range(steps)] + [0.0]


def sigma_to_timestep(sigma: float) -> float:
    """A smooth stand-in for SD's sigma -> timestep table (999 at SIGMA_MAX, 0 at SIGMA_MIN)."""
    return 999.0 * (math.log(sigma) - math.log(SIGMA_MIN)) / (math.log(SIGMA_MAX) - math.log(SIGMA_MIN))


class UNetTarget:
    """The standalone UNet as an engine target. Models are built once per dtype (seeded, so every dtype
    holds the same weights) and compiled graphs are kept per (dtype, layout, kernel, mode, shape)."""

    compile_backend = "inductor"  # what torch.compile cells use (a subclass may name another torch backend)

    def __init__(self, config: UNetConfig | None = None, device: torch.device | str | None = None,
                 weight_seed: int = 0, max_slowdown: float = MAX_SLOWDOWN, log: Callable[[str], None] = print):
        self.config = config or UNetConfig.sd15()
        self.device = torch.device(device) if device else (
            torch.device("cuda") if features.cuda().available else torch.device("cpu"))
        self.weight_seed = weight_seed
        self.max_slowdown = max_slowdown
        self.log = log
        self._models: dict[torch.dtype, UNet] = {}
        self._compiled: dict[tuple, Callable] = {}
        self._precision_reasons: dict[torch.dtype, str] = {}
        self._stop = threading.Event()
        self._runner: Callable | None = None
        self._channels_last = False
        self._webui_default: AttentionKernel | None = None

    def describe(self) -> dict:
        cfg = self.config
        with torch.device("meta"):
            params = parameter_count(UNet(cfg))
        name = {UNetConfig.sd15(): "SD1.5-shaped UNet", UNetConfig.tiny(): "tiny UNet"}.get(cfg, "UNet")
        return {
            "machine": features.device_label(self.device), "torch": torch.__version__,
            "device": str(self.device), "threads": torch.get_num_threads(),
            "dtype policy": f"default = {str(resolve_dtype('default', self.device)).replace('torch.', '')} "
                            "here (fp16 on CUDA, fp32 otherwise); weights cast, no autocast",
            "model": f"{name}, random weights (seed {self.weight_seed}), {params / 1e6:.1f}M parameters; "
                     f"config {cfg.as_dict()}",
            "loop": "Euler-like, one UNet forward per step at the cell's batch (no CFG: a WebUI step is ~2)",
            "image": f"first 3 latent channels / sigma_max in [-{RENDER_BOUND}, {RENDER_BOUND}], nearest x8",
        }

    def interrupt(self) -> None:
        self._stop.set()

    # -- apply ---------------------------------------------------------------------------------------------
    def apply(self, cell: Cell) -> None:
        """Switch to the cell's options; :class:`CellSkipped` says why a cell cannot run here."""
        self._stop.clear()
        if cell.vae != "default":
            raise CellSkipped("the standalone UNet has no VAE (VAE precision is a WebUI benchmark axis)")
        side = 8 * 2 ** (len(self.config.channel_mult) - 1)
        if cell.width % side or cell.height % side:
            raise CellSkipped(f"this UNet needs widths and heights that are multiples of {side} px")
        dtype = resolve_dtype(cell.precision, self.device)
        reason = self.precision_reason(dtype)
        if reason:
            raise CellSkipped(reason)
        kernel = self._kernel(cell, dtype)
        model = self._model(dtype)
        fmt = torch.channels_last if cell.channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        model.attention = kernel
        self._channels_last = cell.channels_last
        self._runner = model if cell.compile == "off" else self._compiled_runner(cell, model, dtype)

    def _kernel(self, cell: Cell, dtype: torch.dtype) -> AttentionKernel:
        if cell.attention == WEBUI_DEFAULT:  # one object, so compiled graphs are not re-traced for a new one
            if self._webui_default is None:
                from .attention import webui_default_kernel
                self._webui_default = webui_default_kernel(self.device)
            return self._webui_default
        try:
            kernel = get_kernel(cell.attention)
        except KeyError as e:
            raise CellSkipped(str(e.args[0])) from None
        reasons = kernel.unavailable_reasons()
        if not reasons:
            for call in attention_calls(self.config, cell, self.device, dtype):
                reasons += [f"{call.describe()}: {r}" for r in kernel.call_reasons(call)]
        if reasons:
            raise CellSkipped(f"{kernel.name}: " + "; ".join(dict.fromkeys(reasons)))
        return kernel

    def _model(self, dtype: torch.dtype) -> UNet:
        if dtype not in self._models:
            start = time.perf_counter()
            self._models[dtype] = build_unet(self.config, self.weight_seed, self.device, dtype)
            self.log(f"[Accel] bench unet: built the {str(dtype).replace('torch.', '')} UNet in "
                     f"{time.perf_counter() - start:.1f} s")
        return self._models[dtype]

    def precision_reason(self, dtype: torch.dtype) -> str:
        """Why ``dtype`` is skipped on this device ("" when it runs); probed once per dtype."""
        if dtype == torch.float32:
            return ""
        if dtype not in self._precision_reasons:
            self._precision_reasons[dtype] = self._probe_precision(dtype)
        return self._precision_reasons[dtype]

    def _probe_precision(self, dtype: torch.dtype) -> str:
        name = str(dtype).replace("torch.", "")
        if self.device.type == "cuda":
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                return f"{torch.cuda.get_device_name(self.device)} has no bf16 support"
            return ""
        try:
            slow = _probe_ms(dtype, self.device)
            fast = _probe_ms(torch.float32, self.device)
        except Exception as e:  # an op missing for this dtype on this device
            return f"{name} does not run on {self.device.type}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if slow > self.max_slowdown * fast:
            return (f"{name} convolutions and matmuls run {slow / fast:.1f}x slower than fp32 on "
                    f"{self.device.type} here (probe {slow:.1f} vs {fast:.1f} ms; limit {self.max_slowdown:g}x)")
        return ""

    def _compiled_runner(self, cell: Cell, model: UNet, dtype: torch.dtype) -> Callable:
        support = features.compile_support()
        if not support.available:
            raise CellSkipped(support.reason)
        if self.device.type != "cuda" and cell.compile in CUDA_GRAPH_MODES:
            raise CellSkipped(f"compile mode {cell.compile} uses CUDA graphs, which need a CUDA device")
        key = (dtype, cell.channels_last, cell.attention, cell.compile, cell.shape_key[:3])
        if key not in self._compiled:
            from ..compile.compiled_module import raise_dynamo_limits
            raise_dynamo_limits(len(self._compiled) + 8)
            # inductor generates C++ (OpenMP) kernels on CPU and triton kernels on CUDA; modes are inductor's
            kwargs = {} if cell.compile == "default" or self.compile_backend != "inductor" else {"mode": cell.compile}
            self._compiled[key] = torch.compile(model, backend=self.compile_backend, dynamic=False, **kwargs)
        return self._compiled[key]

    # -- generate ------------------------------------------------------------------------------------------
    def generate(self, cell: Cell, seed: int) -> Generation:
        """``cell.steps`` denoising steps; ``sampler_s`` is the loop alone (CUDA synchronised)."""
        if self._runner is None:
            raise RuntimeError("apply() a cell before generate()")
        start = time.perf_counter()
        cfg, dev = self.config, self.device
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(cell.batch, cfg.in_channels, cell.height // 8, cell.width // 8, generator=gen)
        context = torch.randn(cell.batch, cfg.context_tokens, cfg.context_dim, generator=gen).to(dev)
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        x = noise.to(dev).contiguous(memory_format=fmt)
        sigmas = sigma_schedule(cell.steps)
        x = x * sigmas[0]
        cudagraphs = cell.compile in CUDA_GRAPH_MODES
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize(dev)
        loop_start = time.perf_counter()
        try:
            with torch.inference_mode():
                for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
                    if self._stop.is_set():
                        raise RuntimeError("interrupted")
                    t = torch.full((cell.batch,), sigma_to_timestep(sigma), device=dev)
                    if cudagraphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    eps = self._runner(x / math.sqrt(sigma * sigma + 1.0), t, context)
                    x = x + eps.float() * (sigma_next - sigma)
        except KernelUnsupported as e:
            raise CellSkipped(str(e)) from None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        sampler_s = time.perf_counter() - loop_start
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        image = render_latents(x)
        return Generation(images=[image], total_s=time.perf_counter() - start, sampler_s=sampler_s,
                          peak_torch_bytes=peak, extra={"latent_std": float(x.float().std())})


def _probe_ms(dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Milliseconds for a small conv + matmul + norm + attention mix in ``dtype`` (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 32, 32, generator=gen).to(device, dtype)
    w = torch.randn(128, 128, 3, 3, generator=gen).mul(0.03).to(device, dtype)
    m = torch.randn(1024, 512, generator=gen).to(device, dtype)
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            y = torch.nn.functional.conv2d(torch.nn.functional.group_norm(x, 32), w, padding=1)
            q = y.flatten(2).transpose(1, 2).reshape(1, 1, 1024, 128)
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
            torch.nn.functional.gelu(m @ m.T)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, (time.perf_counter() - t0) * 1000.0)
    return best
