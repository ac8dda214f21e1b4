"""Self-checks of tests/fakewebui: the fake must behave like the real WebUI v1.10.1 where Accel's contract
tests rely on it. Uses a throw-away probe extension, not Accel itself."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from fakewebui import harness  # noqa: E402

FakeWebUI = harness.FakeWebUI
fake_webui = harness.fake_webui  # the fixture (tests/conftest.py may provide the same one)

PROBE_LIB = """
executions = 0
events = []


def on_model_loaded(sd_model):
    events.append(("model_loaded", sd_model.sd_checkpoint_info.title))


def on_unloaded():
    events.append(("unloaded",))


def on_cfg_denoiser(params):
    events.append(("cfg_denoiser", params.sampling_step, params.denoiser.step, params.x.shape[0]))
"""

PROBE_SCRIPT = """
from modules import script_callbacks, scripts
import probe_lib

probe_lib.executions += 1
probe_lib.basedir = scripts.basedir()
script_callbacks.on_model_loaded(probe_lib.on_model_loaded, name="probe")
script_callbacks.on_script_unloaded(probe_lib.on_unloaded)
script_callbacks.on_cfg_denoiser(probe_lib.on_cfg_denoiser)
"""


@pytest.fixture
def probe_ext(tmp_path):
    root = tmp_path / "sd-webui-probe"
    (root / "probe_lib").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "probe_lib" / "__init__.py").write_text(PROBE_LIB)
    (root / "scripts" / "b_probe.py").write_text(PROBE_SCRIPT)
    (root / "scripts" / "a_order.py").write_text("import probe_lib\nprobe_lib.order = ['a']\n")
    (root / "scripts" / "helper.txt").write_text("not a script")
    return root


@pytest.fixture
def webui(fake_webui, probe_ext):
    fake_webui.add_checkpoint("one.safetensors", seed=1)
    fake_webui.add_checkpoint("two.safetensors", seed=2)
    fake_webui.load_extension(probe_ext)
    fake_webui.start()
    return fake_webui


def test_patches_semantics(fake_webui):
    from modules import patches

    class Target:
        def f(self):
            return "orig"

    original = Target.f
    assert patches.patch("k", Target, "f", lambda self: "new") is original
    assert Target().f() == "new"
    assert patches.original("k", Target, "f") is original
    assert patches.original("other", Target, "f") is None
    with pytest.raises(RuntimeError, match="already applied"):
        patches.patch("k", Target, "f", lambda self: "again")
    assert patches.undo("k", Target, "f") is None
    assert Target().f() == "orig"
    with pytest.raises(RuntimeError, match="no patch"):
        patches.undo("k", Target, "f")


def test_options_semantics(fake_webui):
    fake_webui.start()
    from modules import shared, ui_settings

    calls = []
    info = (
        shared.OptionInfo(
            3, "Three", None, {"minimum": 1}, onchange=lambda: calls.append(1), section=("x", "X")
        )
        .info("hint")
        .needs_reload_ui()
    )
    assert (
        info.comment_after
        == "<span class='info'>(hint)</span> <span class='info'>(requires Reload UI)</span>"
    )
    assert shared.options_section(("s", "S", "cat"), {"k": info}) == {"k": info} and info.category_id == "cat"
    shared.opts.add_option("probe_three", info)
    assert shared.opts.probe_three == 3 and shared.opts.get_default("probe_three") == 3
    assert shared.opts.set("probe_three", 3) is False and calls == []
    assert shared.opts.set("probe_three", 4) is True and calls == [1]
    assert (
        shared.opts.set("probe_three", "four") is True
    )  # opts.set itself does not check types (as in v1.10.1)
    shared.opts.set("probe_three", 4)
    assert ui_settings.UiSettings().run_settings_single("five", "probe_three") == (False, 4)  # UI refuses
    assert shared.opts.same_type(1, 2.0) and not shared.opts.same_type(1, "1")

    def failing():
        raise ValueError("no")

    shared.opts.onchange("probe_three", failing, call=False)
    assert shared.opts.set("probe_three", 7) is False and shared.opts.probe_three == 4
    assert shared.opts.cross_attention_optimization == "Automatic" and shared.opts.upcast_attn is False
    assert shared.opts.auto_vae_precision is True


def test_scripts_loaded_like_the_webui(webui, probe_ext):
    import probe_lib

    assert probe_lib.executions == 1 and probe_lib.order == ["a"]
    assert probe_lib.basedir == str(probe_ext.resolve())
    assert str(probe_ext.resolve()) not in sys.path  # only while the file runs
    names = [c.name for c in webui.callbacks("model_loaded")]
    assert names == ["sd-webui-probe/b_probe.py/model_loaded/probe"]
    assert webui.callbacks("model_loaded")[0].script == str(probe_ext.resolve() / "scripts" / "b_probe.py")
    assert (
        "model_loaded",
        "one.safetensors [" + webui.shared.sd_model.sd_checkpoint_info.shorthash + "]",
    ) in probe_lib.events


def test_reload_ui_clears_callbacks_and_reruns_scripts(webui):
    import probe_lib

    lib_before = sys.modules["probe_lib"]
    webui.reload_ui()
    assert sys.modules["probe_lib"] is lib_before  # libraries are not re-imported
    assert probe_lib.executions == 2  # the script file is
    assert probe_lib.events.count(("unloaded",)) == 1
    assert len(webui.callbacks("model_loaded")) == 1 and len(webui.callbacks("script_unloaded")) == 1


def test_apply_optimizations_selection(webui, capsys):
    import ldm.modules.attention as attention
    from modules import sd_hijack
    from modules import sd_hijack_optimizations as opt
    from modules.hypernetworks import hypernetwork

    titles = webui.optimizer_titles()
    assert titles[0] == "InvokeAI"  # priority 1000 on CPU
    assert titles[1:4] == [
        "Doggettx",
        "sdp-no-mem - scaled dot product without memory efficient attention",
        "sdp - scaled dot product",
    ]
    assert "xformers" not in titles
    assert sd_hijack.apply_optimizations("sdp - scaled dot product") == "sdp"
    assert capsys.readouterr().out.endswith("Applying attention optimization: sdp... done.\n")
    assert attention.CrossAttention.forward is opt.scaled_dot_product_attention_forward
    assert sd_hijack.apply_optimizations("Automatic") == "InvokeAI"
    assert sd_hijack.apply_optimizations("no such title") == "InvokeAI"  # optimizers[0], silently
    assert sd_hijack.apply_optimizations("None") == ""
    assert sd_hijack.current_optimizer is None
    assert attention.CrossAttention.forward is hypernetwork.attention_CrossAttention_forward
    webui.set_option("cross_attention_optimization", "V1 - original v1")  # onchange -> redo_hijack
    assert sd_hijack.current_optimizer.name == "V1"
    assert sd_hijack.model_hijack.optimization_method == "V1"


def test_automatic_prefers_cmd_opt(fake_webui):
    fake_webui.add_checkpoint()
    fake_webui.set_args(fake_webui.args + " --opt-sdp-attention")
    fake_webui.start()
    from modules import sd_hijack

    assert sd_hijack.current_optimizer.name == "sdp"


def test_tiny_unet_runs_through_cross_attention(webui):
    import ldm.modules.attention as attention

    start = time.perf_counter()
    out = webui.unet_forward()
    assert time.perf_counter() - start < 2.0  # ~20 ms single-threaded
    assert out.shape == (2, 4, 8, 8)
    calls = []
    current = attention.CrossAttention.forward

    def counting(self, x, context=None, mask=None, **kwargs):
        calls.append(x.shape)
        return current(self, x, context=context, mask=mask, **kwargs)

    attention.CrossAttention.forward = counting
    try:
        again = webui.unet_forward()
    finally:
        attention.CrossAttention.forward = current
    assert len(calls) > 0 and (again - out).abs().max() == 0
    blocks = [
        m
        for m in webui.shared.sd_model.model.diffusion_model.modules()
        if isinstance(m, attention.BasicTransformerBlock)
    ]
    assert blocks and not any(b.checkpoint for b in blocks)  # use_checkpoint=False as the WebUI sets


def test_checkpoint_passthrough(fake_webui):
    import torch
    from ldm.modules.diffusionmodules import util

    lin = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    seen = []

    def func(t):
        seen.append(torch.is_grad_enabled())
        return lin(t)

    direct = util.checkpoint(func, (x,), lin.parameters(), False)
    assert direct.grad_fn is not None and seen == [True]
    checked = util.checkpoint(func, (x,), lin.parameters(), True)
    assert type(checked.grad_fn).__name__ == "CheckpointFunctionBackward" and seen == [True, False]
    assert torch.allclose(direct, checked)
    checked.sum().backward()


def test_sampling_callbacks_and_nan_check(webui):
    import probe_lib
    import torch
    from modules import devices

    webui.txt2img(steps=3)
    steps = [e[1:] for e in probe_lib.events if e[0] == "cfg_denoiser"]
    assert steps == [(0, 0, 2), (0, 1, 2), (1, 2, 2)]  # sampling_step lags by one, denoiser.step exact
    devices.test_for_nans(torch.tensor([1.0, float("nan")]), "unet")  # only the first element counts
    with pytest.raises(devices.NansException, match="A tensor with NaNs was produced in Unet"):
        devices.test_for_nans(torch.tensor([float("nan"), 1.0]), "unet")


def test_checkpoint_switch_reuses_model(webui):
    import probe_lib

    model = webui.shared.sd_model
    switched = webui.load_model("two.safetensors")
    assert switched is model and model.sd_checkpoint_info.name == "two.safetensors"
    assert webui.opts.sd_model_checkpoint == model.sd_checkpoint_info.title
    assert [e for e in probe_lib.events if e[0] == "model_loaded"][-1][1] == model.sd_checkpoint_info.title


def test_install_py_gets_fake_launch(fake_webui, tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "install.py").write_text(
        textwrap.dedent("""
        import launch
        if not launch.is_installed("surely-not-installed-pkg"):
            launch.run_pip("install surely-not-installed-pkg", "probe requirement")
        print("skip_install", launch.args.skip_install)
    """)
    )
    proc, calls = fake_webui.run_install(ext)
    assert proc.returncode == 0, proc.stderr
    assert "skip_install False" in proc.stdout
    assert [c["command"] for c in calls if c["kind"] == "pip"] == ["install surely-not-installed-pkg"]
    proc, calls = fake_webui.run_install(ext, args="--skip-install")
    assert "skip_install True" in proc.stdout and calls == []


def test_teardown_restores_sys_modules(tmp_path, probe_ext):
    before = {
        n for n in sys.modules if n.split(".")[0] in ("modules", "ldm", "sgm", "launch", "webui", "probe_lib")
    }
    handle = FakeWebUI(tmp_path / "w")
    handle.add_checkpoint()
    handle.load_extension(probe_ext)
    handle.start()
    assert "modules.shared" in sys.modules and "probe_lib" in sys.modules
    handle.close()
    after = {
        n for n in sys.modules if n.split(".")[0] in ("modules", "ldm", "sgm", "launch", "webui", "probe_lib")
    }
    assert after == before
