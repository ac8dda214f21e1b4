"""Fake of modules/sd_models.py: CheckpointInfo, list_models, checkpoint_tiles, select_checkpoint,
model_data, load_model, reload_model_weights, unload_model_weights, with the real order of hijack /
callbacks / option updates. "Weights" are seeded random values derived from the fake checkpoint file (see
sd_models_config)."""

import enum
import os
import re
import sys

import torch
from modules import (
    devices,
    errors,
    hashes,
    paths,
    script_callbacks,
    sd_hijack,
    sd_models_config,
    sd_unet,
    sd_vae,
    shared,
)

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))

checkpoints_list = {}
checkpoint_aliases = {}
checkpoints_loaded = {}


class ModelType(enum.Enum):
    SD1 = 1
    SD2 = 2
    SDXL = 3
    SSD = 4
    SD3 = 5


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        ckpt_dir = os.path.abspath(shared.cmd_opts.ckpt_dir) if shared.cmd_opts.ckpt_dir is not None else None
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if ckpt_dir and abspath.startswith(ckpt_dir):
            name = abspath.replace(ckpt_dir, "")
        elif abspath.startswith(model_path):
            name = abspath.replace(model_path, "")
        else:
            name = os.path.basename(filename)
        name = name.lstrip("\\/")
        self.metadata = {}
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = hashes.calculate_sha256(filename)[0:8] if os.path.isfile(filename) else "NOFILE"
        self.sha256 = hashes.sha256_from_cache(self.filename, f"checkpoint/{name}")
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f"{name} [{self.shorthash}]"
        self.short_title = (
            self.name_for_extra if self.shorthash is None else f"{self.name_for_extra} [{self.shorthash}]"
        )
        self.ids = [
            self.hash,
            self.model_name,
            self.title,
            name,
            self.name_for_extra,
            f"{name} [{self.hash}]",
        ]
        if self.shorthash:
            self.ids += [
                self.shorthash,
                self.sha256,
                f"{self.name} [{self.shorthash}]",
                f"{self.name_for_extra} [{self.shorthash}]",
            ]

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self

    def calculate_shorthash(self):
        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return
        shorthash = self.sha256[0:10]
        if self.shorthash == shorthash:
            return self.shorthash
        self.shorthash = shorthash
        if self.shorthash not in self.ids:
            self.ids += [
                self.shorthash,
                self.sha256,
                f"{self.name} [{self.shorthash}]",
                f"{self.name_for_extra} [{self.shorthash}]",
            ]
        old_title = self.title
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        checkpoints_list.pop(old_title, None)
        self.register()
        return self.shorthash


def setup_model():
    os.makedirs(model_path, exist_ok=True)


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    cmd_ckpt = shared.cmd_opts.ckpt
    found = []
    for dirname in (model_path, shared.cmd_opts.ckpt_dir):
        if dirname and os.path.isdir(dirname):
            for root, _, files in os.walk(dirname, followlinks=True):
                found += [
                    os.path.join(root, f)
                    for f in files
                    if os.path.splitext(f)[1].lower() in (".ckpt", ".safetensors")
                    and not f.lower().endswith((".vae.ckpt", ".vae.safetensors"))
                ]
    if os.path.exists(cmd_ckpt):
        checkpoint_info = CheckpointInfo(cmd_ckpt)
        checkpoint_info.register()
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    for filename in sorted(found, key=str.lower):
        CheckpointInfo(filename).register()


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    checkpoint_info = checkpoint_aliases.get(search_string)
    if checkpoint_info is not None:
        return checkpoint_info
    for s in (search_string, re.sub(re_strip_checksum, "", search_string)):
        found = sorted(
            [info for info in checkpoints_list.values() if s in info.title], key=lambda x: len(x.title)
        )
        if found:
            return found[0]
    return None


def select_checkpoint():
    """Raises `FileNotFoundError` if no checkpoints are found."""
    model_checkpoint = shared.opts.sd_model_checkpoint
    checkpoint_info = checkpoint_aliases.get(model_checkpoint)
    if checkpoint_info is not None:
        return checkpoint_info
    if len(checkpoints_list) == 0:
        raise FileNotFoundError(
            f"No checkpoints found. When searching for checkpoints, looked at:\n - directory "
            f"{model_path}Can't run without a checkpoint. Find and place a .ckpt or .safetensors "
            f"file into any of those locations."
        )
    checkpoint_info = next(iter(checkpoints_list.values()))
    if model_checkpoint is not None:
        print(
            f"Checkpoint {model_checkpoint} not found; loading fallback {checkpoint_info.title}",
            file=sys.stderr,
        )
    return checkpoint_info


def set_model_type(model, state_dict):
    model.is_sd1 = model.is_sd2 = model.is_sdxl = model.is_ssd = model.is_sd3 = False
    if hasattr(model, "conditioner"):
        model.is_sdxl = True
        model.model_type = ModelType.SDXL
    elif hasattr(model.cond_stage_model, "model"):
        model.is_sd2 = True
        model.model_type = ModelType.SD2
    else:
        model.is_sd1 = True
        model.model_type = ModelType.SD1


def _fill_weights(model, seed):
    """Stands in for load_state_dict: deterministic values from the checkpoint's seed (same shapes, in
    place)."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and pname == "weight":
                    p.copy_(1.0 + 0.1 * noise)
                elif p.dim() == 1:
                    p.copy_(0.02 * noise)
                else:
                    p.copy_(noise / (p[0].numel() ** 0.5))


def load_model_weights(model, checkpoint_info: CheckpointInfo, state_dict):
    sd_model_hash = checkpoint_info.calculate_shorthash()
    shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    if state_dict is None:
        state_dict = sd_models_config.read_state_dict(checkpoint_info.filename)
    set_model_type(model, state_dict)
    model.latent_channels = getattr(model, "latent_channels", 4)
    _fill_weights(model, state_dict.get("seed", 0))
    if shared.cmd_opts.opt_channelslast:
        model.to(memory_format=torch.channels_last)
    if shared.cmd_opts.no_half:
        model.float()
        devices.dtype_unet = torch.float32
    else:
        vae = model.first_stage_model
        if shared.cmd_opts.no_half_vae:
            model.first_stage_model = None
        model.half()
        model.first_stage_model = vae
        devices.dtype_unet = torch.float16
    model.model.diffusion_model.dtype = devices.dtype_unet  # the real sets use_fp16 in the config instead
    devices.unet_needs_upcast = (
        shared.cmd_opts.upcast_sampling
        and devices.dtype == torch.float16
        and devices.dtype_unet == torch.float16
    )
    model.first_stage_model.to(devices.dtype_vae)
    model.sd_model_hash = sd_model_hash
    model.sd_model_checkpoint = checkpoint_info.filename
    model.sd_checkpoint_info = checkpoint_info
    shared.opts.data["sd_checkpoint_hash"] = checkpoint_info.sha256
    sd_vae.delete_base_vae()
    sd_vae.clear_loaded_vae()
    vae_file, vae_source = sd_vae.resolve_vae(checkpoint_info.filename).tuple()
    sd_vae.load_vae(model, vae_file, vae_source)


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False

    def get_sd_model(self):
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            try:
                load_model()
            except Exception as e:
                errors.display(e, "loading stable diffusion model", full_traceback=True)
                print("", file=sys.stderr)
                print("Stable diffusion model failed to load", file=sys.stderr)
                self.sd_model = None
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def send_model_to_cpu(m):
    if m is not None and not m.lowvram:
        m.to(devices.cpu)
    devices.torch_gc()


def send_model_to_device(m):
    m.lowvram = bool(shared.cmd_opts.lowvram or shared.cmd_opts.medvram)
    if not m.lowvram:
        m.to(shared.device)


def send_model_to_trash(m):
    m.to(device="meta")
    devices.torch_gc()


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    checkpoint_info = checkpoint_info or select_checkpoint()
    if model_data.sd_model:
        send_model_to_trash(model_data.sd_model)
        model_data.sd_model = None
        devices.torch_gc()
    state_dict = already_loaded_state_dict or sd_models_config.read_state_dict(checkpoint_info.filename)
    checkpoint_config = sd_models_config.find_checkpoint_config(state_dict, checkpoint_info)
    print(f"Creating model from config: {checkpoint_config}")
    sd_model = sd_models_config.instantiate_from_config(checkpoint_config)
    sd_model.used_config = checkpoint_config
    load_model_weights(sd_model, checkpoint_info, state_dict)
    send_model_to_device(sd_model)
    sd_hijack.model_hijack.hijack(sd_model)
    sd_model.eval()
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
    script_callbacks.model_loaded_callback(sd_model)
    with devices.autocast(), torch.no_grad():
        sd_model.cond_stage_model_empty_prompt = sd_model.get_learned_conditioning([""])
    print("Model loaded.")
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    checkpoint_info = info or select_checkpoint()
    if not sd_model:
        sd_model = model_data.sd_model
    if sd_model is None:
        current_checkpoint_info = None
    else:
        current_checkpoint_info = sd_model.sd_checkpoint_info
        if sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
            return sd_model
    if sd_model is not None:  # reuse_model_from_already_loaded with sd_checkpoints_limit == 1
        model_data.sd_model = sd_model
    if sd_model is not None:
        sd_unet.apply_unet("None")
        send_model_to_cpu(sd_model)
        sd_hijack.model_hijack.undo_hijack(sd_model)
    state_dict = sd_models_config.read_state_dict(checkpoint_info.filename)
    checkpoint_config = sd_models_config.find_checkpoint_config(state_dict, checkpoint_info)
    if sd_model is None or checkpoint_config != sd_model.used_config:
        if sd_model is not None:
            send_model_to_trash(sd_model)
        load_model(checkpoint_info, already_loaded_state_dict=state_dict)
        return model_data.sd_model
    try:
        load_model_weights(sd_model, checkpoint_info, state_dict)
    except Exception:
        print("Failed to load checkpoint, restoring previous")
        load_model_weights(sd_model, current_checkpoint_info, None)
        raise
    finally:
        sd_hijack.model_hijack.hijack(sd_model)
        if not sd_model.lowvram:
            sd_model.to(devices.device)
        script_callbacks.model_loaded_callback(sd_model)
    print("Weights loaded.")
    model_data.set_sd_model(sd_model)
    sd_unet.apply_unet()
    return sd_model


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model
