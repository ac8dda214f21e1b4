"""UNet/VAE precision settings inside the WebUI, and the VAE's NaN retry (see :mod:`lib_accel.runtime.precision`).

State the WebUI keeps and Accel changes while a precision is chosen: the weights' dtype, ``devices.dtype_unet``
(with ``devices.unet_needs_upcast`` off: the wrapper does the casting), ``devices.dtype_vae``, the ``forward``
of the model's UNet wrapper class (ldm's DiffusionWrapper, sgm's OpenAIWrapper) and
``processing.decode_first_stage``. "default" and script unload give all of it back.

The WebUI converts the UNet to its own dtype on every weight load (then ``model_loaded`` re-applies the
choice), so a UNet is pristine after a load; one that was narrowed is reloaded from the checkpoint before
widening. The VAE is small: its weights as loaded are kept on the CPU when first narrowed and restored from
there.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from ..runtime import precision as P
from .compile.glue import unet_of


class PrecisionController:
    def __init__(self, owner: Any):
        self.owner = owner
        self.unet_loaded: torch.dtype | None = None  # the UNet's dtype right after the WebUI loaded it
        self.unet_call_dtype: torch.dtype | None = None  # None: the wrapper passes calls through
        self.webui_unet_globals: tuple | None = None  # (dtype_unet, unet_needs_upcast) before Accel
        self.webui_vae_dtype: torch.dtype | None = None
        self._vae_backup: dict[str, torch.Tensor] | None = None
        self._vae_backup_of: int | None = None
        self.messages: dict[str, str] = {}  # "unet"/"vae"/"vae_retry" -> what happened last

    # -- model lifecycle ------------------------------------------------------------------------------------
    def on_model_loaded(self, sd_model: Any) -> None:
        from modules import devices
        unet = unet_of(sd_model)
        self.unet_loaded = P.weight_dtype(unet) if unet is not None else None
        self.webui_unet_globals = (devices.dtype_unet, devices.unet_needs_upcast)
        self._vae_backup, self._vae_backup_of = None, None
        vae = getattr(sd_model, "first_stage_model", None)
        if vae is not None and self.webui_vae_dtype is not None and P.weight_dtype(vae) != self.webui_vae_dtype:
            devices.dtype_vae = self.webui_vae_dtype  # a load outside the guards: take it as the WebUI's
            vae.to(self.webui_vae_dtype)

    def apply(self, sd_model: Any, config: Any) -> list[str]:
        """Bring UNet and VAE to the configured precision; returns log lines for what changed."""
        if sd_model is None:
            return []
        if self.unet_loaded is None:
            self.on_model_loaded(sd_model)
        self.install_load_guards()
        changes = self._apply_unet(sd_model, config.unet_dtype)
        changes += self._apply_vae(sd_model, config.vae_dtype)
        self._set_retry(bool(config.vae_nan_retry))
        return changes

    def _device(self, module: torch.nn.Module) -> torch.device:
        try:
            return next(module.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _apply_unet(self, sd_model: Any, choice: str) -> list[str]:
        from modules import devices
        unet, wrapper = unet_of(sd_model), getattr(sd_model, "model", None)
        if unet is None or wrapper is None:
            return []
        current = P.weight_dtype(unet)
        target = P.DTYPES.get(choice, self.unet_loaded)
        refused = ""  # kept in the message: what the WebUI default runs in must not hide why
        if choice != "default":
            reason = P.unsupported_reason(choice, self._device(unet))
            if reason:
                refused = f"UNet {choice} refused: {reason}; "
                choice, target = "default", self.unet_loaded
        changes = []
        if target != current:
            if P.needs_reload(self.unet_loaded, current, target):
                return self._reload(sd_model, f"UNet back to {P.dtype_name(target)} from {P.dtype_name(current)}")
            self.owner.compiler.uninstall_all(sd_model)  # compiled graphs are specialised on the old dtype
            if choice == "default":
                unet.to(target)  # exactly the WebUI's layout again (its norms in the loaded dtype too)
            else:
                P.convert_module(unet, target)
            changes.append(f"UNet precision {P.dtype_name(current)} -> {P.dtype_name(target)}")
        if choice == "default":
            self.owner.patches.undo(type(wrapper), "forward")
            self.unet_call_dtype = None
            if self.webui_unet_globals is not None:
                devices.dtype_unet, devices.unet_needs_upcast = self.webui_unet_globals
        else:
            self.unet_call_dtype = target
            original = self.owner.patches.original(type(wrapper), "forward")
            self.owner.patches.patch(type(wrapper), "forward", self._precision_forward(original))
            devices.dtype_unet, devices.unet_needs_upcast = target, False
        self.messages["unet"] = refused + f"UNet runs in {P.dtype_name(target)}" + \
            (" (WebUI default)" if choice == "default" else " (Accel)")
        return changes

    def call_context(self, device_type: str) -> contextlib.AbstractContextManager:
        """The autocast a UNet call runs in under Accel's precision (nothing extra with the WebUI default)."""
        dtype = self.unet_call_dtype
        return contextlib.nullcontext() if dtype is None else P.unet_autocast(device_type, dtype)

    def _precision_forward(self, original: Any) -> Any:
        controller = self

        @functools.wraps(original)
        def accel_precision_forward(self, *args, **kwargs):
            dtype = controller.unet_call_dtype
            if dtype is None:
                return original(self, *args, **kwargs)
            x = args[0] if args else kwargs.get("x")
            device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
            return P.call_in_precision(functools.partial(original, self), dtype, device_type, args, kwargs)

        return accel_precision_forward

    def _reload(self, sd_model: Any, why: str) -> list[str]:
        """Reload the checkpoint's weights; ``model_loaded`` then applies the configured precision."""
        from modules import sd_models
        self.owner.log(f"[Accel] {why}: reloading the checkpoint's weights (the narrower copy lost precision)")
        # the load_model_weights guard widens the tensors the load copies into; model_loaded re-applies
        with self.owner.queue_locked():
            sd_models.reload_model_weights(sd_model, info=sd_model.sd_checkpoint_info, forced_reload=True)
        return [why + " (weights reloaded)"]

    def _apply_vae(self, sd_model: Any, choice: str) -> list[str]:
        from modules import devices
        vae = getattr(sd_model, "first_stage_model", None)
        if vae is None:
            return []
        if self.webui_vae_dtype is None:
            self.webui_vae_dtype = devices.dtype_vae
        target = P.DTYPES.get(choice, self.webui_vae_dtype)
        refused = ""
        if choice != "default":
            reason = P.unsupported_reason(choice, self._device(vae))
            if reason:
                refused = f"VAE {choice} refused: {reason}"
                self.messages["vae"] = refused
                target = self.webui_vae_dtype
        current = P.weight_dtype(vae)
        if target == current:
            devices.dtype_vae = target
            return []
        self._convert_vae(vae, current, target)
        devices.dtype_vae = target
        self.messages["vae"] = (refused + "; " if refused else "") + f"VAE runs in {P.dtype_name(target)}"
        return [f"VAE precision {P.dtype_name(current)} -> {P.dtype_name(target)}"]

    def _convert_vae(self, vae: torch.nn.Module, current: torch.dtype, target: torch.dtype) -> None:
        """``vae.to(target)``, from the weights as loaded when a narrowing conversion has happened before."""
        if self._vae_backup_of != id(vae):
            self._vae_backup, self._vae_backup_of = None, id(vae)
        if self._vae_backup is None and P.is_lossy(current, target):
            self._vae_backup = {k: v.detach().to("cpu", copy=True) for k, v in vae.state_dict().items()}
        vae.to(target)
        if self._vae_backup is not None:
            with torch.no_grad():
                vae.load_state_dict(self._vae_backup)  # one rounding from the loaded values into ``target``

    # -- weight loads ---------------------------------------------------------------------------------------
    def install_load_guards(self) -> None:
        """Wrap the WebUI's weight loads: ``load_state_dict`` copies into the existing tensors, so a UNet or VAE
        Accel narrowed would round the fresh weights; they are widened back to the WebUI's dtypes first."""
        import importlib

        from modules import sd_models
        original = self.owner.patches.original(sd_models, "load_model_weights")
        self.owner.patches.patch(sd_models, "load_model_weights", self._guarded(original, unet=True))
        try:
            sd_vae = importlib.import_module("modules.sd_vae")
        except ImportError:
            return
        original = self.owner.patches.original(sd_vae, "load_vae")
        self.owner.patches.patch(sd_vae, "load_vae", self._guarded(original, unet=False))

    def _guarded(self, original: Any, unet: bool) -> Any:
        controller = self

        @functools.wraps(original)
        def accel_widen_before_load(model, *args, **kwargs):
            controller.widen_for_load(model, unet=unet)
            return original(model, *args, **kwargs)

        return accel_widen_before_load

    def widen_for_load(self, model: Any, unet: bool = True) -> None:
        from modules import devices
        net = unet_of(model) if unet else None
        if net is not None and self.unet_loaded is not None and P.weight_dtype(net) != self.unet_loaded:
            net.to(self.unet_loaded)
        vae = getattr(model, "first_stage_model", None)
        if vae is not None and self.webui_vae_dtype is not None:
            current = P.weight_dtype(vae)
            if current != self.webui_vae_dtype:
                # from the weights as loaded (not a widened bf16 copy): sd_vae keeps the VAE it finds here as
                # the checkpoint's own ("base") VAE when it loads a VAE file, and restores it later
                self._convert_vae(vae, current, self.webui_vae_dtype)
            devices.dtype_vae = self.webui_vae_dtype  # the WebUI converts the loaded VAE to this
        self._vae_backup, self._vae_backup_of = None, None

    # -- NaN retry --------------------------------------------------------------------------------------------
    def _set_retry(self, enabled: bool) -> None:
        from modules import processing
        if not enabled:
            self.owner.patches.undo(processing, "decode_first_stage")
            return
        original = self.owner.patches.original(processing, "decode_first_stage")
        self.owner.patches.patch(processing, "decode_first_stage", self._retrying_decode(original))

    def _retrying_decode(self, original: Any) -> Any:
        controller = self

        @functools.wraps(original)
        def accel_decode_with_nan_retry(model, x, *args, **kwargs):
            from modules import devices
            result = original(model, x, *args, **kwargs)
            while isinstance(result, torch.Tensor) and P.has_nan(result):
                vae = model.first_stage_model
                safer = P.safer_vae_dtype(devices.dtype_vae, controller._device(vae))
                if safer is None:
                    return result  # fp32 NaNs: nothing safer to try; the WebUI's NaN check reports it
                message = (f"[Accel] the VAE produced NaNs in {P.dtype_name(devices.dtype_vae)}; decoding again in "
                           f"{P.dtype_name(safer)} and keeping {P.dtype_name(safer)} until the VAE precision "
                           "setting or the model changes")
                controller.owner.log(message)
                controller.messages["vae_retry"] = message.removeprefix("[Accel] ")
                controller._convert_vae(vae, devices.dtype_vae, safer)
                devices.dtype_vae = safer
                result = original(model, x.to(safer), *args, **kwargs)
            return result

        return accel_decode_with_nan_retry

    # -- unload ----------------------------------------------------------------------------------------------
    def restore(self, sd_model: Any) -> None:
        """Give the WebUI back its dtypes (script unload); the patches go with the owner's undo_all."""
        from modules import devices
        if sd_model is not None:
            unet = unet_of(sd_model)
            if unet is not None and self.unet_loaded is not None and P.weight_dtype(unet) != self.unet_loaded:
                unet.to(self.unet_loaded)  # widening or narrowing back to the loaded dtype: no reload at unload
            vae = getattr(sd_model, "first_stage_model", None)
            if vae is not None and self.webui_vae_dtype is not None:
                self._convert_vae(vae, P.weight_dtype(vae), self.webui_vae_dtype)
        if self.webui_unet_globals is not None:
            devices.dtype_unet, devices.unet_needs_upcast = self.webui_unet_globals
        if self.webui_vae_dtype is not None:
            devices.dtype_vae = self.webui_vae_dtype
        self.unet_call_dtype = None
        self.webui_vae_dtype = None

    def snapshot(self) -> dict:
        return {"unet_call_dtype": P.dtype_name(self.unet_call_dtype) if self.unet_call_dtype else None,
                "unet_loaded": P.dtype_name(self.unet_loaded) if self.unet_loaded else None,
                "messages": dict(self.messages)}
