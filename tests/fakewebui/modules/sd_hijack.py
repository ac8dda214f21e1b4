"""Fake of modules/sd_hijack.py: optimizer list/selection (same order, fallbacks and log lines), undo, the
import-time UNetModel.forward patches (routing to sd_unet.current_unet), and ``model_hijack``
(hijack/undo_hijack/redo_hijack). Importing it imports modules/sd_hijack_unet.py first, as the real does, which
installs the UNet input casts (``CondFunc``); ``apply_optimizations`` puts sd_hijack_unet's ``th`` into ldm's
and sgm's openaimodel. Text-encoder wrapping (textual inversion, emphasis) is not faked."""

import ldm.models.diffusion.ddpm
import ldm.modules.attention
import ldm.modules.diffusionmodules.model
import ldm.modules.diffusionmodules.openaimodel
import sgm.models.diffusion
import sgm.modules.attention
import sgm.modules.diffusionmodules.model
import sgm.modules.diffusionmodules.openaimodel
import torch
from modules import errors, patches, script_callbacks, sd_hijack_optimizations, sd_hijack_unet, sd_unet, shared
from modules.hypernetworks import hypernetwork
from torch.nn.functional import silu

attention_CrossAttention_forward = ldm.modules.attention.CrossAttention.forward
diffusionmodules_model_nonlinearity = ldm.modules.diffusionmodules.model.nonlinearity
diffusionmodules_model_AttnBlock_forward = ldm.modules.diffusionmodules.model.AttnBlock.forward

ldm.modules.attention.MemoryEfficientCrossAttention = ldm.modules.attention.CrossAttention
ldm.modules.attention.BasicTransformerBlock.ATTENTION_MODES["softmax-xformers"] = (
    ldm.modules.attention.CrossAttention
)

optimizers = []
current_optimizer: sd_hijack_optimizations.SdOptimization = None

ldm_patched_forward = sd_unet.create_unet_forward(ldm.modules.diffusionmodules.openaimodel.UNetModel.forward)
ldm_original_forward = patches.patch(
    __file__, ldm.modules.diffusionmodules.openaimodel.UNetModel, "forward", ldm_patched_forward
)

sgm_patched_forward = sd_unet.create_unet_forward(sgm.modules.diffusionmodules.openaimodel.UNetModel.forward)
sgm_original_forward = patches.patch(
    __file__, sgm.modules.diffusionmodules.openaimodel.UNetModel, "forward", sgm_patched_forward
)


def list_optimizers():
    new_optimizers = script_callbacks.list_optimizers_callback()
    new_optimizers = [x for x in new_optimizers if x.is_available()]
    new_optimizers = sorted(new_optimizers, key=lambda x: x.priority, reverse=True)
    optimizers.clear()
    optimizers.extend(new_optimizers)


def apply_optimizations(option=None):
    global current_optimizer

    undo_optimizations()

    if len(optimizers) == 0:
        current_optimizer = None
        return ""

    ldm.modules.diffusionmodules.model.nonlinearity = silu
    ldm.modules.diffusionmodules.openaimodel.th = sd_hijack_unet.th

    sgm.modules.diffusionmodules.model.nonlinearity = silu
    sgm.modules.diffusionmodules.openaimodel.th = sd_hijack_unet.th

    if current_optimizer is not None:
        current_optimizer.undo()
        current_optimizer = None

    selection = option or shared.opts.cross_attention_optimization
    if selection == "Automatic" and len(optimizers) > 0:
        matching_optimizer = next(
            iter([x for x in optimizers if x.cmd_opt and getattr(shared.cmd_opts, x.cmd_opt, False)]),
            optimizers[0],
        )
    else:
        matching_optimizer = next(iter([x for x in optimizers if x.title() == selection]), None)

    if selection == "None" or selection == "Automatic" and shared.cmd_opts.disable_opt_split_attention:
        matching_optimizer = None
    elif matching_optimizer is None:
        matching_optimizer = optimizers[0]

    if matching_optimizer is not None:
        print(f"Applying attention optimization: {matching_optimizer.name}... ", end="")
        matching_optimizer.apply()
        print("done.")
        current_optimizer = matching_optimizer
        return current_optimizer.name
    else:
        print("Disabling attention optimization")
        return ""


def undo_optimizations():
    ldm.modules.diffusionmodules.model.nonlinearity = diffusionmodules_model_nonlinearity
    ldm.modules.attention.CrossAttention.forward = hypernetwork.attention_CrossAttention_forward
    ldm.modules.diffusionmodules.model.AttnBlock.forward = diffusionmodules_model_AttnBlock_forward

    # as in v1.10.1: sgm gets ldm's nonlinearity and ldm's AttnBlock.forward back here
    sgm.modules.diffusionmodules.model.nonlinearity = diffusionmodules_model_nonlinearity
    sgm.modules.attention.CrossAttention.forward = hypernetwork.attention_CrossAttention_forward
    sgm.modules.diffusionmodules.model.AttnBlock.forward = diffusionmodules_model_AttnBlock_forward


class EmbeddingDatabase:
    def load_textual_inversion_embeddings(self, force_reload=False):
        pass


class StableDiffusionModelHijack:
    fixes = None
    layers = None
    circular_enabled = False
    clip = None
    optimization_method = None

    def __init__(self):
        self.extra_generation_params = {}
        self.comments = []
        self.embedding_db = EmbeddingDatabase()

    def apply_optimizations(self, option=None):
        try:
            self.optimization_method = apply_optimizations(option)
        except Exception as e:
            errors.display(e, "applying cross attention optimization")
            undo_optimizations()

    def hijack(self, m):
        conditioner = getattr(m, "conditioner", None)
        if conditioner:
            m.cond_stage_model = conditioner  # two text encoders in SDXL -> the conditioner itself
        self.apply_optimizations()
        self.clip = m.cond_stage_model
        self.layers = list(m.modules())
        if isinstance(m, ldm.models.diffusion.ddpm.LatentDiffusion):
            sd_unet.original_forward = ldm_original_forward
        elif isinstance(m, sgm.models.diffusion.DiffusionEngine):
            sd_unet.original_forward = sgm_original_forward
        else:
            sd_unet.original_forward = None

    def undo_hijack(self, m):
        if getattr(m, "conditioner", None) and hasattr(m, "cond_stage_model"):
            delattr(m, "cond_stage_model")
        undo_optimizations()
        self.apply_circular(False)
        self.layers = None
        self.clip = None

    def apply_circular(self, enable):
        if self.circular_enabled == enable:
            return
        self.circular_enabled = enable
        for layer in [layer for layer in self.layers if type(layer) is torch.nn.Conv2d]:
            layer.padding_mode = "circular" if enable else "zeros"

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}

    def redo_hijack(self, m):
        self.undo_hijack(m)
        self.hijack(m)


model_hijack = StableDiffusionModelHijack()
