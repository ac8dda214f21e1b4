"""Fake of modules/processing.py (+ the CFG denoiser of sd_samplers_cfg_denoiser.py and a k-diffusion-style
Euler loop): ``StableDiffusionProcessing`` fields subset, ``process_images(p)`` running txt2img through the
loaded model, firing cfg_denoiser/cfg_denoised/cfg_after_cfg each step (``sampling_step`` lags by one,
``denoiser.step`` is exact), the "unet" NaN check on the latents and the "vae" check per image with the
auto_vae_precision retry. As in v1.10.1: ``override_settings`` are set with ``opts.set(..., is_api=True,
run_callbacks=False)`` (no onchange) and restored afterwards when ``override_settings_restore_afterwards``;
``p.scripts`` (a ScriptRunner) gets before_process, process, before_process_batch, process_batch,
post_sample, postprocess_batch, postprocess_batch_list, postprocess_image and postprocess in the real order;
each image's infotext includes ``p.extra_generation_params`` as ``create_infotext`` writes them."""

import json
from dataclasses import dataclass
from typing import Any

import torch
from modules import devices, errors, script_callbacks, scripts, sd_models, sd_unet, sd_vae, shared
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
    scripts: Any = None
    script_args: list = None

    def __post_init__(self):
        self.comments = {}
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or []


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75


class Processed:
    def __init__(self, p, images, seed, info, infotexts=None):
        self.images, self.seed, self.info = images, seed, info
        self.infotexts = infotexts or [info]
        self.width, self.height, self.prompt = p.width, p.height, p.prompt
        self.extra_generation_params = p.extra_generation_params


class CFGDenoiser:
    """The per-step callback protocol of the real CFGDenoiser (cond and uncond batched: x has batch 2*b)."""

    def __init__(self, sd_model, p):
        self.inner_model, self.p, self.step, self.total_steps = sd_model, p, 0, p.steps

    def model_output(self, x, sigma, cond, image_cond):
        """k-diffusion's CompVisDenoiser: ``apply_model(x * c_in, sigma_to_t(sigma), cond=...)`` with the
        condition dict the real CFGDenoiser makes (``make_condition_dict``); x, t and the conditioning arrive
        in the sampler's dtype, modules/sd_hijack_unet.py casts them (SD1/SD2 and SDXL alike)."""
        # k-diffusion's sigma_to_t returns a float timestep (interpolated index), in sigma's dtype
        t = (
            (self.inner_model.alphas_cumprod.to(sigma.device) - 1.0 / (sigma[:, None] ** 2 + 1))
            .abs()
            .argmin(dim=1)
            .to(sigma.dtype)
        )
        if getattr(self.inner_model, "is_sdxl", False):
            c = {**cond, "c_concat": [image_cond]}
        else:
            c = {"c_crossattn": [cond["crossattn"]], "c_concat": [image_cond]}
        c_in = 1 / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        eps = self.inner_model.apply_model(x * c_in, t, cond=c)
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
        x_out = self.model_output(params.x, params.sigma, both, params.image_cond)
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


def quote(text):
    """infotext_utils.quote: JSON-quote a value holding a comma, newline or colon."""
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(p, index=0):
    """The infotext of image ``index`` of the current batch: prompt, the core fields, then
    ``p.extra_generation_params`` (None dropped, a list indexed, a callable called)."""
    generation_params = {
        "Steps": p.steps,
        "CFG scale": p.cfg_scale,
        "Seed": p.seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(p=p, index=index)
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompts[index]}{negative}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    """txt2img through shared.sd_model (loading it if needed); returns decoded images as tensors in [0, 1].
    As in v1.10.1, the work is in process_images_inner, looked up in this module's globals."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    opts = shared.opts
    stored_opts = {
        k: opts.data[k] if k in opts.data else opts.get_default(k) for k in p.override_settings if k in opts.data
    }
    shared.state.begin(job="txt2img")
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
            if k == "sd_vae":
                sd_vae.reload_vae_weights()
        if p.sd_model is None or "sd_model_checkpoint" in p.override_settings:
            p.sd_model = shared.sd_model  # the real's p.sd_model is a property returning shared.sd_model
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
                if k == "sd_vae":
                    sd_vae.reload_vae_weights()
        shared.state.end()


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    seed = p.seed if p.seed != -1 else int(torch.randint(0, 2**31, (1,)).item())
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, output_images = [], []
    with torch.no_grad():
        with devices.autocast():
            sd_unet.apply_unet()
        for n in range(p.n_iter):
            p.iteration = n
            if shared.state.interrupted:
                break
            p.prompts = [p.prompt] * p.batch_size
            p.negative_prompts = [p.negative_prompt] * p.batch_size
            p.seeds = [seed + n * p.batch_size + i for i in range(p.batch_size)]
            p.subseeds = list(p.seeds)
            batch = {"batch_number": n, "prompts": p.prompts, "seeds": p.seeds, "subseeds": p.subseeds}
            if p.scripts is not None:
                p.scripts.before_process_batch(p, **batch)
                p.scripts.process_batch(p, **batch)
            generator = torch.Generator().manual_seed(p.seeds[0])
            with devices.autocast():
                cond = p.sd_model.get_learned_conditioning(p.prompts)
                uncond = p.sd_model.get_learned_conditioning(p.negative_prompts)
                samples = sample_euler(p, CFGDenoiser(p.sd_model, p), cond, uncond, generator)
                if p.scripts is not None:
                    ps = scripts.PostSampleArgs(samples)
                    p.scripts.post_sample(p, ps)
                    samples = ps.samples
                decoded = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            x_samples = torch.clamp((torch.stack(decoded).float() + 1.0) / 2.0, min=0.0, max=1.0)
            images = list(x_samples)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
                batch_params = scripts.PostprocessBatchListArgs(images)
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                images = batch_params.images
            for i, image in enumerate(images):
                p.batch_index = i
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(create_infotext(p, i))
                output_images.append(image)
    res = Processed(p, output_images, seed, infotexts[0] if infotexts else "", infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
