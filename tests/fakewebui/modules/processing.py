"""Fake of modules/processing.py (+ the CFG denoiser of sd_samplers_cfg_denoiser.py and a k-diffusion-style
Euler loop): ``StableDiffusionProcessing`` fields subset, ``process_images(p)`` running txt2img through the
loaded model, firing cfg_denoiser/cfg_denoised/cfg_after_cfg each step (``sampling_step`` lags by one,
``denoiser.step`` is exact), the "unet" NaN check on the latents and the "vae" check per image with the
auto_vae_precision retry."""

from dataclasses import dataclass
from typing import Any

import torch
from modules import devices, errors, script_callbacks, sd_unet, shared
from modules.script_callbacks import AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False

    def __post_init__(self):
        self.comments = {}
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75


class Processed:
    def __init__(self, p, images, seed, info):
        self.images, self.seed, self.info = images, seed, info
        self.width, self.height, self.prompt = p.width, p.height, p.prompt
        self.extra_generation_params = p.extra_generation_params


class CFGDenoiser:
    """The per-step callback protocol of the real CFGDenoiser (cond and uncond batched: x has batch 2*b)."""

    def __init__(self, sd_model, p):
        self.inner_model, self.p, self.step, self.total_steps = sd_model, p, 0, p.steps

    def model_output(self, x, sigma, cond):
        # k-diffusion's sigma_to_t returns a float timestep (interpolated index), in sigma's dtype
        t = (
            (self.inner_model.alphas_cumprod.to(sigma.device) - 1.0 / (sigma[:, None] ** 2 + 1))
            .abs()
            .argmin(dim=1)
            .to(sigma.dtype)
        )
        sdxl = getattr(self.inner_model, "is_sdxl", False)
        cond = {k: v.to(devices.dtype_unet) for k, v in cond.items()}
        c = cond if sdxl else {"c_crossattn": [cond["crossattn"]]}
        x_in = x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        if not sdxl:  # modules/sd_hijack_unet.apply_model casts x and t to the UNet dtype (sgm's path does not)
            x_in, t = x_in.to(devices.dtype_unet), t.to(devices.dtype_unet)
        eps = self.inner_model.apply_model(x_in, t, c).to(x.dtype)
        return x - eps * sigma[:, None, None, None]

    def forward(self, x, sigma, uncond, cond, cond_scale, image_cond=None):
        state = shared.state
        b = x.shape[0]
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        image_cond_in = (
            torch.zeros_like(x_in[:, :1]) if image_cond is None else torch.cat([image_cond, image_cond])
        )
        params = CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, cond, uncond, self
        )
        script_callbacks.cfg_denoiser_callback(params)
        if isinstance(params.text_cond, dict):  # SDXL: {"crossattn": ..., ...}
            both = {k: torch.cat([params.text_cond[k], params.text_uncond[k]]) for k in params.text_cond}
        else:
            both = {"crossattn": torch.cat([params.text_cond, params.text_uncond])}
        x_out = self.model_output(params.x, params.sigma, both)
        denoised_params = CFGDenoisedParams(
            x_out, state.sampling_step, state.sampling_steps, self.inner_model
        )
        script_callbacks.cfg_denoised_callback(denoised_params)
        x_out = denoised_params.x
        denoised = x_out[b:] + (x_out[:b] - x_out[b:]) * cond_scale
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        script_callbacks.cfg_after_cfg_callback(after)
        self.step += 1
        return after.x


def sample_euler(p, denoiser, cond, uncond, generator):
    alphas = p.sd_model.alphas_cumprod.float()
    sigmas_all = ((1 - alphas) / alphas) ** 0.5
    idx = torch.linspace(len(sigmas_all) - 1, 0, p.steps).round().long()
    sigmas = torch.cat([sigmas_all[idx], torch.zeros(1)]).to(shared.device)
    x = (
        torch.randn((p.batch_size, 4, p.height // 8, p.width // 8), generator=generator).to(shared.device)
        * sigmas[0]
    )
    shared.state.sampling_steps, shared.state.sampling_step = p.steps, 0
    for i in range(p.steps):
        if shared.state.interrupted or shared.state.skipped:
            break
        denoised = denoiser.forward(
            x, sigmas[i] * torch.ones(x.shape[0], device=x.device), uncond, cond, p.cfg_scale
        )
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        shared.state.sampling_step = i  # callback_state after the step, as k-diffusion calls it
    return x


def decode_first_stage(model, x):
    with devices.autocast(disable=x.dtype == devices.dtype_vae):
        return model.decode_first_stage(x.to(devices.dtype_vae))


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    samples = []
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i : i + 1])[0]
        if check_for_nans:
            try:
                devices.test_for_nans(sample, "vae")
            except devices.NansException as e:
                if not shared.opts.auto_vae_precision or devices.dtype_vae == torch.float32:
                    raise e
                errors.print_error_explanation(
                    "A tensor with all NaNs was produced in VAE.\n"
                    "Web UI will now convert VAE into 32-bit float and retry.\n"
                    "To disable this behavior, disable the "
                    "'Automatically revert VAE to 32-bit floats' setting.\n"
                    "To always start with 32-bit VAE, use --no-half-vae commandline flag."
                )
                devices.dtype_vae = torch.float32
                model.first_stage_model.to(devices.dtype_vae)
                sample = decode_first_stage(model, batch[i : i + 1].to(devices.dtype_vae))[0]
        samples.append(sample if target_device is None else sample.to(target_device))
    return samples


def process_images(p: StableDiffusionProcessing) -> Processed:
    """txt2img through shared.sd_model (loading it if needed); returns decoded images as tensors in [0, 1]."""
    p.sd_model = p.sd_model or shared.sd_model
    seed = p.seed if p.seed != -1 else int(torch.randint(0, 2**31, (1,)).item())
    generator = torch.Generator().manual_seed(seed)
    shared.state.begin(job="txt2img")
    try:
        with torch.no_grad(), devices.autocast():
            sd_unet.apply_unet()
            cond = p.sd_model.get_learned_conditioning([p.prompt] * p.batch_size)
            uncond = p.sd_model.get_learned_conditioning([p.negative_prompt] * p.batch_size)
            samples = sample_euler(p, CFGDenoiser(p.sd_model, p), cond, uncond, generator)
            images = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
    finally:
        shared.state.end()
    images = [torch.clamp((x.float() + 1.0) / 2.0, min=0.0, max=1.0) for x in images]
    info = f"{p.prompt}\nSteps: {p.steps}, CFG scale: {p.cfg_scale}, Seed: {seed}, Size: {p.width}x{p.height}"
    return Processed(p, images, seed, info)
