"""Tier 2, in the fake WebUI v1.10.1: the per-image Script hooks and the infotext (scripts/accel_infotext.py), what
``override_settings`` really change, invalid setting values, and the Settings page's start-up cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accel_boot import start_with_checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def webui(fake_webui, tmp_path):
    return start_with_checkpoints(fake_webui, tmp_path, "sd1")


def accel(webui):
    return sys.modules["lib_accel.webui.extension"].get()


# -- the per-image Script hooks and the infotext (scripts/accel_infotext.py) ------------------------------------
def generate(webui, **kwargs):
    """txt2img as the WebUI runs it: through the txt2img ScriptRunner, so AlwaysVisible scripts' hooks run."""
    return webui.txt2img(scripts=webui.module("scripts").scripts_txt2img, **kwargs)


def infotext_fields_of(text: str) -> dict[str, str]:
    params = text.splitlines()[-1]
    return dict(part.split(": ", 1) for part in params.split(", ") if ": " in part)


def test_accel_script_is_an_alwayson_script_with_its_hooks(webui):
    runner = webui.module("scripts").scripts_txt2img
    hooks = [type(s).__name__ for s in runner.ordered_scripts("postprocess_batch")]
    assert hooks == ["AccelImageHooks"]
    assert [type(s).__name__ for s in runner.ordered_scripts("process_batch")] == ["AccelImageHooks"]
    assert runner.alwayson_scripts[0].filename.endswith("accel_infotext.py")


def test_infotext_end_to_end_states_attention_toggles_and_speed(webui):
    errors = webui.module("errors")
    webui.set_option("cross_attention_optimization", "Accel SDPA math")
    webui.set_option("accel_nan_check", "full")
    res = generate(webui, steps=3)
    assert "Accel" not in res.info, "accel_infotext is off by default"
    webui.set_option("accel_infotext", True)
    res = generate(webui, steps=3, batch_size=2)
    assert len(res.infotexts) == 2
    fields = infotext_fields_of(res.infotexts[1])
    assert fields["Accel attention"] == "Accel SDPA math"
    assert fields["Accel toggles"] == "nan_check full"
    assert fields["Accel speed"].endswith(("it/s", "s/it"))
    assert fields["Seed"] == "2" and fields["Steps"] == "3"
    assert not errors.exception_records, "no hook raised (the runner would only report it)"


def test_override_settings_apply_for_one_job_only_what_runs_and_the_infotext_says_what_ran(webui, capsys):
    opts = webui.opts
    bench, tf32 = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    devices = webui.module("devices")
    webui_check = devices.test_for_nans
    webui.set_option("cross_attention_optimization", "Accel SDPA math")
    overrides = {"accel_infotext": True, "accel_cudnn_benchmark": "on" if not bench else "off",
                 "accel_nan_check": "off"}
    seen = {}

    def spy(params):  # what is in force while the job samples
        seen.update(benchmark=torch.backends.cudnn.benchmark, nan_check=devices.test_for_nans,
                    opts_nan=opts.accel_nan_check)

    webui.module("script_callbacks").on_cfg_denoiser(spy, name="test-spy")
    capsys.readouterr()
    res = generate(webui, override_settings=dict(overrides))
    out = capsys.readouterr().out
    assert seen == {"benchmark": bench, "nan_check": webui_check, "opts_nan": "off"}, \
        "the WebUI puts overrides in opts without onchange: Accel's toggles are not applied for the job"
    fields = infotext_fields_of(res.info)
    assert fields["Accel attention"] == "Accel SDPA math", "accel_infotext (read per image) did apply"
    assert fields["Accel toggles"] == "default", "toggles that did not run are not claimed"
    assert out.count("override_settings accel_cudnn_benchmark=") == 1 and out.count("accel_nan_check='off'") == 1
    assert "accel_infotext" not in out
    assert (opts.accel_infotext, opts.accel_nan_check) == (False, "default"), "restored after the job"

    res = generate(webui, override_settings=dict(overrides))
    assert "override_settings" not in capsys.readouterr().out, "said once per key and value"
    assert infotext_fields_of(res.info)["Accel toggles"] == "default"

    webui.set_option("accel_nan_check", "full")  # applied through onchange: now it runs and is claimed
    res = generate(webui, override_settings={"accel_infotext": True, "accel_nan_check": "full"})
    assert infotext_fields_of(res.info)["Accel toggles"] == "nan_check full"
    assert "override_settings" not in capsys.readouterr().out, "an override equal to what runs is not flagged"
    assert torch.backends.cuda.matmul.allow_tf32 is tf32


def test_override_kept_afterwards_is_still_not_claimed(webui):
    opts = webui.opts
    webui.set_option("accel_infotext", True)
    res = generate(webui, override_settings={"accel_channels_last": "on"}, override_settings_restore_afterwards=False)
    assert opts.accel_channels_last == "on", "the WebUI keeps it in opts (still without onchange)"
    assert infotext_fields_of(res.info)["Accel toggles"] == "default"
    res = generate(webui)
    unet = webui.load_model().model.diffusion_model
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(), "never applied, so never claimed"
    assert infotext_fields_of(res.info)["Accel toggles"] == "default"


# -- invalid settings (config.json, /sdapi/v1/options and override_settings are not type-checked) --------------
def test_nan_chunk_fraction_falls_back_and_the_chunked_kernel_still_applies(webui, capsys):
    webui.set_options_api({"accel_chunk_memory_fraction": float("nan")})
    webui.set_option("cross_attention_optimization", "Accel chunked (low memory)")
    assert webui.module("sd_hijack").current_optimizer.title() == "Accel chunked (low memory)"
    assert accel(webui).applied_optimization.runner.memory_fraction == 0.25
    assert generate(webui).images
    assert not webui.module("errors").exception_records


def test_an_invalid_value_is_said_once_in_the_log_and_shown_in_the_tab(webui, capsys):
    from lib_accel.webui import options, ui_tab
    from lib_accel.webui.api import routes as api
    capsys.readouterr()
    webui.set_options_api({"accel_autotune_repeats": 2.9, "accel_tf32": True})
    for _ in range(5):  # the badge, the tab and every image read the settings
        config = accel(webui).config()
        api.runtime_state(accel(webui))
    assert (config.autotune_repeats, config.tf32) == (3, "default")
    out = capsys.readouterr().out
    assert out.count("accel_autotune_repeats=2.9 is invalid (not a whole number)") == 1, out
    assert out.count("accel_tf32=True is invalid") == 1, out
    tab = ui_tab.runtime_md(api.runtime_state(accel(webui)))
    invalid = [line for line in tab.splitlines() if line.startswith("**Invalid setting:**")]
    assert len(invalid) == 2 and any("autotune" in line and "not a whole number" in line for line in invalid), tab
    webui.set_options_api({"accel_autotune_repeats": 4.0, "accel_tf32": "default"})  # a slider's float is fine
    assert accel(webui).config().autotune_repeats == 4 and options.invalid_settings() == []
    assert "invalid" not in capsys.readouterr().out


# -- start-up cost: the Settings page must not import torch._dynamo ---------------------------------------------
SETTINGS_PAGE = """
import sys
sys.path.insert(0, "tests")
from fakewebui.harness import FakeWebUI
handle = FakeWebUI(sys.argv[1])
handle.add_checkpoint("sd15.safetensors", kind="sd1")
handle.load_extension(".")
handle.start()
infos = {k: v for k, v in handle.opts.data_labels.items() if k.startswith("accel_")}
for info in infos.values():  # what ui_settings.create_setting_component does for each setting
    args = info.component_args() if callable(info.component_args) else info.component_args
backend = infos["accel_compile_backend"]
print("STATIC", "torch._dynamo" in sys.modules, backend.component_args()["choices"], flush=True)
backend.refresh()  # the dropdown's refresh button, then the WebUI re-reads component_args
choices = backend.component_args()["choices"]
print("REFRESHED", "torch._dynamo" in sys.modules, len(choices))
handle.close()
"""


def test_building_the_settings_page_does_not_import_dynamo(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SETTINGS_PAGE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    lines = {line.split(" ", 1)[0]: line for line in proc.stdout.splitlines()}
    assert lines.get("STATIC", "").startswith("STATIC False ['inductor'"), proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert lines["REFRESHED"].startswith("REFRESHED True"), proc.stdout
