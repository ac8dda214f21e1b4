"""The fake WebUI against the real v1.10.1 sources (``ACCEL_WEBUI_DIR``, the checkout the integration tier uses),
read with ``ast``, never imported: where Accel depends on the WebUI, the fake has the same names, signatures,
hijack targets and call order. Skipped, with the reason, when ACCEL_WEBUI_DIR is not set."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

FAKE = Path(__file__).resolve().parents[1] / "fakewebui"
WEBUI_DIR = os.environ.get("ACCEL_WEBUI_DIR")
if not WEBUI_DIR:
    pytest.skip("ACCEL_WEBUI_DIR is not set: no real WebUI checkout to compare the fake with",
                allow_module_level=True)
REAL = Path(WEBUI_DIR).resolve()
REAL_LORA = REAL / "extensions-builtin" / "Lora"
FAKE_LORA = FAKE / "extensions-builtin-opt-in" / "Lora"

# real CondFunc targets the fake leaves out: modules the fake has no copy of (open_clip, instruct-pix2pix)
NOT_FAKED_TARGETS = {"open_clip.transformer.ResidualAttentionBlock.__init__"}
NOT_FAKED_PREFIXES = ("modules.models.diffusion.ddpm_edit.",)


def tree(path: Path) -> ast.Module:
    if not path.is_file():
        pytest.fail(f"{path} is missing (ACCEL_WEBUI_DIR={WEBUI_DIR} should be a WebUI v1.10.1 checkout)")
    return ast.parse(path.read_text(encoding="utf8"))


def functions(module: ast.Module, cls: str | None = None) -> dict[str, list[str]]:
    """Top-level functions (or ``cls``'s methods) -> their parameter names."""
    body = module.body
    if cls is not None:
        body = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    out = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            out[node.name] = [x.arg for x in a.posonlyargs + a.args] + (["*" + a.vararg.arg] if a.vararg else []) + \
                [x.arg for x in a.kwonlyargs] + (["**" + a.kwarg.arg] if a.kwarg else [])
    return out


def condfunc_targets(module: ast.Module) -> set[str]:
    return {node.args[0].value for node in ast.walk(module)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CondFunc"
            and node.args and isinstance(node.args[0], ast.Constant)}


def imported_modules(module: ast.Module) -> set[str]:
    return {alias.name for node in module.body if isinstance(node, ast.ImportFrom) and node.module == "modules"
            for alias in node.names}


def scripts_calls(function: ast.FunctionDef) -> list[str]:
    """``p.scripts.<hook>(...)`` calls in source order."""
    calls = [(node.lineno, node.func.attr) for node in ast.walk(function)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "scripts"]
    return [name for _, name in sorted(calls)]


def function_node(module: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_sd_hijack_unet_hijacks_what_the_real_does_and_is_imported_by_sd_hijack():
    real = condfunc_targets(tree(REAL / "modules" / "sd_hijack_unet.py"))
    fake = condfunc_targets(tree(FAKE / "modules" / "sd_hijack_unet.py"))
    expected = {t for t in real if t not in NOT_FAKED_TARGETS and not t.startswith(NOT_FAKED_PREFIXES)}
    assert fake == expected
    assert {"ldm.models.diffusion.ddpm.LatentDiffusion.apply_model",
            "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper.forward"} <= fake
    for name in ("apply_model", "timestep_embedding_cast_result"):
        assert functions(tree(FAKE / "modules" / "sd_hijack_unet.py"))[name] == \
            functions(tree(REAL / "modules" / "sd_hijack_unet.py"))[name]
    assert "sd_hijack_unet" in imported_modules(tree(REAL / "modules" / "sd_hijack.py"))
    assert "sd_hijack_unet" in imported_modules(tree(FAKE / "modules" / "sd_hijack.py"))


def test_openaiwrapper_lives_where_the_real_hijack_finds_it():
    real = REAL / "repositories" / "generative-models" / "sgm" / "modules" / "diffusionmodules" / "wrappers.py"
    fake = FAKE / "sgm" / "modules" / "diffusionmodules" / "wrappers.py"
    assert functions(tree(fake), "OpenAIWrapper") == functions(tree(real), "OpenAIWrapper")


def test_script_hooks_have_the_real_signatures_and_order():
    real, fake = tree(REAL / "modules" / "scripts.py"), tree(FAKE / "modules" / "scripts.py")
    fake_runner, real_runner = functions(fake, "ScriptRunner"), functions(real, "ScriptRunner")
    fake_script, real_script = functions(fake, "Script"), functions(real, "Script")
    for name in [n for n in fake_runner if not n.startswith("_")]:
        assert fake_runner[name] == real_runner[name], f"ScriptRunner.{name}"
    for name in [n for n in fake_script if n in real_script]:
        assert fake_script[name] == real_script[name], f"Script.{name}"
    real_proc, fake_proc = tree(REAL / "modules" / "processing.py"), tree(FAKE / "modules" / "processing.py")
    real_order = scripts_calls(function_node(real_proc, "process_images")) + \
        scripts_calls(function_node(real_proc, "process_images_inner"))
    fake_order = scripts_calls(function_node(fake_proc, "process_images")) + \
        scripts_calls(function_node(fake_proc, "process_images_inner"))
    assert fake_order == [name for name in real_order if name in fake_order]
    accel = functions(tree(FAKE.parents[1] / "scripts" / "accel_infotext.py"), "AccelImageHooks")
    used = {name for name in accel if name in real_script and name not in ("title", "show")}
    assert used <= set(fake_order), "every hook Accel's script overrides is one the fake runs"


def test_sd_vae_functions_have_the_real_signatures_and_call_sites():
    real, fake = functions(tree(REAL / "modules" / "sd_vae.py")), functions(tree(FAKE / "modules" / "sd_vae.py"))
    assert set(fake) <= set(real)
    for name in fake:
        assert fake[name] == real[name], name
    for path in ("sd_models.py", "processing.py"):
        real_text = (REAL / "modules" / path).read_text(encoding="utf8")
        fake_text = (FAKE / "modules" / path).read_text(encoding="utf8")
        for call in ("sd_vae.load_vae(", "sd_vae.reload_vae_weights()"):
            assert (call in real_text) == (call in fake_text), f"{path}: {call}"


def test_lora_patches_and_forwards_have_the_real_names():
    real_networks = functions(tree(REAL_LORA / "networks.py"))
    fake_networks = functions(tree(FAKE_LORA / "networks.py"))
    real_forwards = {n for n in real_networks if n.startswith("network_") and n.endswith(("_forward", "_state_dict"))}
    fake_module = tree(FAKE_LORA / "networks.py")
    fake_names = set(fake_networks) | {t.id for node in fake_module.body if isinstance(node, ast.Assign)
                                       for t in node.targets if isinstance(t, ast.Name)}
    assert real_forwards <= fake_names
    for name in ("network_apply_weights", "network_restore_weights_from_backup", "network_reset_cached_weight",
                 "network_forward", "network_MultiheadAttention_forward", "assign_network_names_to_compvis_modules"):
        assert fake_networks[name] == real_networks[name], name
    real_patches = tree(REAL_LORA / "lora_patches.py")
    real_fields = {t.attr for node in ast.walk(real_patches) if isinstance(node, ast.Assign)
                   for t in node.targets if isinstance(t, ast.Attribute)}
    patched = next(node.value for node in tree(FAKE_LORA / "lora_patches.py").body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_PATCHED")
    classes = {n.attr for n in ast.walk(patched) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "torch.nn"}
    shorts = {n.elts[1].value for n in ast.walk(patched) if isinstance(n, ast.Tuple) and len(n.elts) == 2
              and all(isinstance(e, ast.Constant) for e in n.elts)}
    assert real_fields == {f"{cls}_{short}" for cls in classes for short in shorts}
