"""A VAE the WebUI loads while Accel runs the VAE narrower (modules/sd_vae.py, as v1.10.1 calls it: the ``sd_vae``
setting, an ``sd_vae`` override, the end of every checkpoint load) arrives exactly as in the file: Accel's guard
on ``sd_vae.load_vae`` widens the VAE to the WebUI's dtype first, since ``load_state_dict`` copies into the
existing tensors and would round the fresh weights to the narrower dtype."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from accel_boot import start_with_checkpoints


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1")


def write_vae(webui, name: str, seed: int) -> dict[str, torch.Tensor]:
    """A VAE file in models/VAE: the loaded VAE's tensors plus float32 noise bf16 cannot hold exactly."""
    vae = webui.load_model().first_stage_model
    g = torch.Generator().manual_seed(seed)
    state = {k: (v.float() + 1e-3 * torch.randn(v.shape, generator=g)).contiguous()
             for k, v in vae.state_dict().items()}
    assert any(not torch.equal(v, v.bfloat16().float()) for v in state.values())
    folder = Path(webui.module("sd_vae").vae_path)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(folder / name))
    webui.module("sd_vae").refresh_vae_list()
    return state


def vae_state(webui) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in webui.load_model().first_stage_model.state_dict().items()}


def assert_exactly(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    rounded = [k for k in want if not torch.equal(got[k], want[k])]
    assert not rounded, f"{len(rounded)} of {len(want)} tensors differ from the file (rounded on load): {rounded[:3]}"


def _wraps_the_fakes_load_vae(function) -> bool:
    wrapped = getattr(function, "__wrapped__", None)
    return wrapped is not None and wrapped.__code__.co_filename.endswith(("modules/sd_vae.py", "modules\\sd_vae.py"))


def test_the_guard_wraps_the_webuis_load_vae(webui):
    sd_vae = webui.module("sd_vae")
    assert _wraps_the_fakes_load_vae(sd_vae.load_vae)
    sys.modules["lib_accel.webui.extension"].get().on_script_unloaded()
    assert not hasattr(sd_vae.load_vae, "__wrapped__"), "unload gives the WebUI its load_vae back"


def test_a_vae_chosen_while_the_vae_runs_in_bf16_is_loaded_unrounded(webui):
    devices = webui.module("devices")
    webui.set_option("accel_vae_dtype", "bf16")
    assert devices.dtype_vae == torch.bfloat16
    state = write_vae(webui, "custom.safetensors", seed=1)

    webui.set_option("sd_vae", "custom.safetensors")  # onchange: sd_vae.reload_vae_weights
    vae = webui.load_model().first_stage_model
    assert webui.module("sd_vae").loaded_vae_file.endswith("custom.safetensors")
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}, "model_loaded re-applied Accel's bf16"
    assert torch.isfinite(webui.txt2img(steps=2).images[0]).all()
    webui.set_option("accel_vae_dtype", "default")
    assert devices.dtype_vae == torch.float32
    assert_exactly(vae_state(webui), state)


def test_back_to_the_checkpoints_own_vae_after_a_vae_file_it_is_unrounded(webui):
    """sd_vae keeps the checkpoint's VAE (``store_base_vae``) as it is when the first VAE file is loaded, after
    the guard: so the guard must give it back as loaded, not widen Accel's bf16 copy."""
    original = vae_state(webui)
    webui.set_option("accel_vae_dtype", "bf16")
    write_vae(webui, "custom.safetensors", seed=1)
    webui.set_option("sd_vae", "custom.safetensors")
    webui.set_option("sd_vae", "None")  # restore_base_vae
    assert webui.module("sd_vae").loaded_vae_file is None
    webui.set_option("accel_vae_dtype", "default")
    assert_exactly(vae_state(webui), original)


def test_an_sd_vae_override_for_one_job_is_loaded_unrounded(webui):
    webui.set_option("sd_vae", "Automatic")  # in opts.data (a saved config), so the job's override is undone after
    original = vae_state(webui)
    webui.set_option("accel_vae_dtype", "bf16")
    state = write_vae(webui, "job.safetensors", seed=2)
    seen = {}

    def spy(params):  # the VAE the job runs with, widened back to float32 to compare with the file
        seen.setdefault("state", {k: v.float() for k, v in webui.load_model().first_stage_model.state_dict().items()})

    webui.module("script_callbacks").on_cfg_denoiser(spy, name="test-spy")
    webui.txt2img(steps=2, override_settings={"sd_vae": "job.safetensors"})
    assert webui.module("sd_vae").loaded_vae_file is None, "restored after the job"
    expected = {k: v.bfloat16().float() for k, v in state.items()}  # rounded once, by Accel's bf16, no more
    assert_exactly(seen["state"], expected)
    webui.set_option("accel_vae_dtype", "default")
    assert_exactly(vae_state(webui), original)  # the checkpoint's VAE, restored by restore_base_vae
