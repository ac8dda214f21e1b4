"""Checkpoint slimming end to end on small synthetic SD-like checkpoints (CPU, no WebUI, no network)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
import types

import pytest
import torch

from lib_accel.checkpoint import loading as checkpoint_load
from lib_accel.checkpoint import safetensors_io, slim_cli, slim_verify, slim_write
from lib_accel.checkpoint import slim_plan as slim
from lib_accel.checkpoint.loading import UnsafeCheckpointError


def _sha(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _model_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "model.diffusion_model.input_blocks.0.0.weight": r(32, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": r(32),
        "model.diffusion_model.out.2.weight": r(4, 32, 3, 3),
        "first_stage_model.encoder.conv_in.weight": r(16, 3, 3, 3),
        "first_stage_model.decoder.conv_out.bias": r(3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": r(64, 16),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": r(16).double(),
        "model.diffusion_model.time_embed.0.weight": r(8, 8).bfloat16(),
        "alphas_cumprod": torch.linspace(0.999, 0.005, 1000),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1234, dtype=torch.int32),
        "model_ema.diffusion_modelinput_blocks000weight": r(32, 4, 3, 3),
    }


def _lightning_ckpt(path, seed: int = 0) -> dict[str, torch.Tensor]:
    sd = _model_sd(seed)
    torch.save({"state_dict": sd, "epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2",
                "optimizer_states": [{"state": {0: {"step": 10, "exp_avg": torch.randn(32, 4, 3, 3),
                                                    "exp_avg_sq": torch.rand(32, 4, 3, 3)}},
                                      "param_groups": [{"lr": 1e-4, "params": [0]}]}],
                "lr_schedulers": [{"last_epoch": 3}]}, path)
    return sd


@pytest.fixture()
def ckpt(tmp_path):
    path = tmp_path / "sd15.ckpt"
    sd = _lightning_ckpt(path)
    return path, sd


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_plan_and_run_drop_ema_and_optimizer(ckpt):
    path, sd = ckpt
    plan = slim.plan_slim(str(path))
    assert plan.output == str(path.with_name("sd15.slim-fp16.safetensors"))
    assert set(plan.dropped) == {"ema", "optimizer"}
    assert set(plan.dropped["ema"]) == {k for k in sd if k.startswith("model_ema.")}
    assert all(k.startswith("optimizer_states.0.state.0.") for k in plan.dropped["optimizer"])
    assert set(plan.kept_keys) == {k for k in sd if not k.startswith("model_ema.")}
    assert {"epoch", "global_step", "lr_schedulers"} <= set(plan.extras)
    result = slim_write.run_slim(plan)
    assert os.path.getsize(plan.output) == result.bytes_written == plan.predicted_bytes
    assert set(safetensors_io.load_file(plan.output)) == set(plan.kept_keys)


def test_dtypes_floats_narrowed_everything_else_kept(ckpt):
    path, sd = ckpt
    for dtype, target in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("keep", None)):
        plan = slim.plan_slim(str(path), dtype=dtype)
        slim_write.run_slim(plan)
        out = safetensors_io.load_file(plan.output)
        for k, t in out.items():
            src = sd[k]
            if target is not None and src.dtype in (torch.float32, torch.float64) and k != "alphas_cumprod":
                assert t.dtype == target, k
                torch.testing.assert_close(t.double(), src.double(), rtol=2 ** -7, atol=1e-6)
            else:  # ints, bf16 when fp16 is asked, schedule buffers, or dtype "keep": bit-identical
                assert t.dtype == src.dtype and torch.equal(t, src), k
        assert out["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
        assert slim_verify.verify_slim(plan).ok


def test_keep_ema(ckpt):
    path, sd = ckpt
    plan = slim.plan_slim(str(path), drop_ema=False)
    assert "ema" not in plan.dropped and "model_ema.decay" in plan.kept_keys


def test_original_untouched_and_verified(ckpt):
    path, _ = ckpt
    before = (_sha(path), os.stat(path).st_mtime_ns, os.stat(path).st_size)
    plan = slim.plan_slim(str(path))
    slim_write.run_slim(plan)
    report = slim_verify.verify_slim(plan)
    assert report.ok, report.problems
    assert report.checked == len(plan.tensors) and report.output_bytes < report.source_bytes
    assert (_sha(path), os.stat(path).st_mtime_ns, os.stat(path).st_size) == before


def test_verify_catches_a_changed_value(ckpt):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    slim_write.run_slim(plan)
    with open(plan.output, "rb") as f:  # where the tensor's bytes start: after the 8-byte length and the header
        n = int.from_bytes(f.read(8), "little")
        offset = 8 + n + json.loads(f.read(n))["model.diffusion_model.out.2.weight"]["data_offsets"][0]
    with open(plan.output, "r+b") as f:
        f.seek(offset + 1)
        f.write(bytes([f.read(1)[0] ^ 0x40]))
    report = slim_verify.verify_slim(plan)
    assert not report.ok and any("out.2.weight" in p for p in report.problems)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_no_output_and_no_temp(ckpt, exc):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    before = _files(path.parent)
    seen_temp = []

    def progress(done, total):
        if done > plan.source_bytes + 1024:  # past hashing, mid-way through the output
            seen_temp.extend(f for f in os.listdir(path.parent) if f.endswith(".accel-tmp"))
            raise exc("stop")

    with pytest.raises(exc):
        slim_write.run_slim(plan, progress=progress)
    assert seen_temp, "the interruption should have happened while the temp file existed"
    assert _files(path.parent) == before


def test_failure_inside_conversion_cleans_up(ckpt, monkeypatch):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    before, calls = _files(path.parent), []
    real = slim_write.convert

    def flaky(t, planned):
        calls.append(planned.name)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(t, planned)

    monkeypatch.setattr(slim_write, "convert", flaky)
    with pytest.raises(OSError):
        slim_write.run_slim(plan)
    assert _files(path.parent) == before


def test_output_that_appears_while_writing_is_not_replaced(ckpt):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    out = plan.output

    def progress(done, total):
        if done > plan.source_bytes + 1024 and not os.path.exists(out):
            with open(out, "wb") as f:
                f.write(b"someone else's file")

    with pytest.raises(slim.OutputExistsError):
        slim_write.run_slim(plan, progress=progress)
    assert pathlib.Path(out).read_bytes() == b"someone else's file"
    assert not [f for f in os.listdir(path.parent) if f.endswith(".accel-tmp")]


def test_verify_notices_a_changed_source(tmp_path):
    src = tmp_path / "m.safetensors"
    sd = _model_sd()
    safetensors_io.save_file(sd, src, {"v": "1"})
    plan = slim.plan_slim(str(src))
    slim_write.run_slim(plan)
    assert slim_verify.verify_slim(plan).ok
    safetensors_io.save_file(sd, src, {"v": "2"})  # same tensors, different bytes
    report = slim_verify.verify_slim(plan)
    assert not report.ok and any("no longer matches the sha256" in p for p in report.problems)


def _evil_class(kind: str, marker: str) -> type:
    class Evil:
        def __reduce__(self):
            if kind == "os.system":
                return os.system, (f"touch '{marker}'",)
            return exec, (f"open({marker!r}, 'w').close()",)
    return Evil


@pytest.mark.parametrize("kind", ["os.system", "exec"])
@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_refused_and_not_run(tmp_path, capsys, kind, zip_format):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _model_sd(), "payload": _evil_class(kind, str(marker))()}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        slim.plan_slim(str(path))
    assert ("system" if kind == "os.system" else "exec") in info.value.refused
    assert "may contain code" in str(info.value)
    assert slim_cli.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert _files(tmp_path) == ["evil.ckpt"]


def test_lightning_and_numpy_metadata_load_without_importing_them(tmp_path, monkeypatch):
    """Real SD 1.x .ckpt files carry a Lightning ModelCheckpoint and numpy scalars next to the weights."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks",
             "pytorch_lightning.callbacks.model_checkpoint"]
    mods = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "/x"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = names[-1], "ModelCheckpoint"
    mods[names[-1]].ModelCheckpoint = ModelCheckpoint
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    extra = {"callbacks": {ModelCheckpoint: ModelCheckpoint()}}
    np = sys.modules.get("numpy")
    if np is not None:
        extra["global_step"] = np.int64(470000)
    path = tmp_path / "pl.ckpt"
    torch.save({"state_dict": _model_sd(), **extra}, path)
    for n in names:
        monkeypatch.delitem(sys.modules, n)
    loaded = checkpoint_load.load_checkpoint(path)
    assert "restricted" in loaded.loader and "model.diffusion_model.out.2.weight" in loaded.tensors
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(UnsafeCheckpointError, match="ModelCheckpoint"):
        checkpoint_load.load_checkpoint(path, inert_globals=())


def test_loader_ignores_a_replaced_torch_load(ckpt, monkeypatch):
    """The WebUI swaps ``torch.load`` for a checker that returns None on refusal; we must not use it."""
    path, sd = ckpt
    monkeypatch.setattr(torch, "load", lambda *a, **k: None)
    with checkpoint_load.load_checkpoint(path) as loaded:
        assert set(loaded.tensors) == set(sd) and loaded.wrapper == "state_dict"


def test_not_enough_disk_is_refused_up_front(ckpt, monkeypatch):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    usage = shutil.disk_usage(path.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    before = _files(path.parent)
    with pytest.raises(slim.NotEnoughDiskError) as info:
        slim_write.run_slim(plan)
    assert info.value.needed > plan.predicted_bytes and info.value.free == 4096
    assert slim.format_bytes(info.value.needed) in str(info.value) and "4.00 KiB free" in str(info.value)
    assert any("not enough free disk" in p for p in plan.problems())
    assert _files(path.parent) == before


@pytest.mark.parametrize("prefixed", [False, True])
def test_vae_bake(ckpt, tmp_path, prefixed):
    path, sd = ckpt
    vae = {k[len("first_stage_model."):]: torch.full_like(v, 0.25) for k, v in sd.items()
           if k.startswith("first_stage_model.")}
    vae["loss.discriminator.weight"] = torch.zeros(3)
    vae_path = tmp_path / "vae-ft-mse.pt"
    if prefixed:  # a whole checkpoint used as the VAE source
        vae = {"first_stage_model." + k: v for k, v in vae.items()}
        vae["model.diffusion_model.x"] = torch.zeros(1)
    torch.save({"state_dict": vae}, vae_path)
    plan = slim.plan_slim(str(path), vae=str(vae_path))
    assert plan.output.endswith("sd15.slim-fp16-vae.safetensors") and "vae-replaced" in plan.dropped
    slim_write.run_slim(plan)
    out = safetensors_io.load_file(plan.output)
    vae_keys = [k for k in out if k.startswith("first_stage_model.")]
    assert sorted(vae_keys) == sorted(k for k in sd if k.startswith("first_stage_model."))
    assert all(torch.all(out[k] == 0.25) and out[k].dtype == torch.float16 for k in vae_keys)
    assert not any("loss." in k for k in out)
    md = safetensors_io.load_metadata(plan.output)
    assert md["accel.vae_file"] == "vae-ft-mse.pt" and md["accel.vae_sha256"] == _sha(vae_path)
    assert slim_verify.verify_slim(plan).ok


def test_vae_that_does_not_fit_is_refused(ckpt, tmp_path):
    path, _ = ckpt
    vae_path = tmp_path / "wrong.safetensors"
    safetensors_io.save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
                              "decoder.conv_out.bias": torch.zeros(3)}, vae_path)
    with pytest.raises(slim.SlimError, match="does not fit"):
        slim.plan_slim(str(path), vae=str(vae_path))
    safetensors_io.save_file({"decoder.conv_out.bias": torch.zeros(3)}, vae_path)
    with pytest.raises(slim.SlimError, match="lacks 1"):
        slim.plan_slim(str(path), vae=str(vae_path))


def test_metadata_records_provenance(ckpt):
    path, _ = ckpt
    plan = slim.plan_slim(str(path))
    slim_write.run_slim(plan)
    md = safetensors_io.load_metadata(plan.output)
    assert md["accel.source_file"] == "sd15.ckpt" and md["accel.source_sha256"] == _sha(path)
    assert md["accel.dtype"] == "fp16" and md["accel.tool"] == slim.TOOL and md["accel.version"]
    assert md["format"] == "pt" and md["accel.source_bytes"] == str(os.path.getsize(path))
    dropped = json.loads(md["accel.dropped"])
    assert dropped["ema"]["count"] == 3 and dropped["ema"]["prefixes"] == ["model_ema."]
    assert dropped["optimizer"]["prefixes"] == ["optimizer_states."]


def test_safetensors_source_keeps_its_metadata(tmp_path):
    src = tmp_path / "flat.safetensors"
    safetensors_io.save_file(_model_sd(), src, {"modelspec.title": "My model"})
    plan = slim.plan_slim(str(src), dtype="bf16")
    slim_write.run_slim(plan)
    md = safetensors_io.load_metadata(plan.output)
    assert md["modelspec.title"] == "My model" and md["accel.dtype"] == "bf16"
    assert "ema" in plan.dropped and slim_verify.verify_slim(plan).ok


def test_fp16_overflow_is_refused_without_output(tmp_path):
    src = tmp_path / "big.safetensors"
    safetensors_io.save_file({"model.diffusion_model.w": torch.tensor([1.0, 1e6])}, src)
    plan = slim.plan_slim(str(src))
    with pytest.raises(slim.SlimError, match="overflow"):
        slim_write.run_slim(plan)
    assert _files(tmp_path) == ["big.safetensors"]


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors", "model", "m.slim-fp16.safetensors",
                                  "m.slim.safetensors", ".hidden.pt", "a.b.c.pth"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "keep"])
def test_output_name_never_equals_input(tmp_path, name, dtype):
    src = str(tmp_path / name)
    out = slim.derive_output_path(src, dtype)
    assert out != src and out.endswith(".safetensors") and os.path.dirname(out) == str(tmp_path)


def test_output_never_the_input_even_with_overwrite(ckpt, tmp_path):
    path, _ = ckpt
    src = tmp_path / "in.safetensors"
    safetensors_io.save_file(_model_sd(), src)
    links = [src]
    for make in (os.symlink, os.link):
        try:
            make(src, tmp_path / f"alias-{make.__name__}.safetensors")
            links.append(tmp_path / f"alias-{make.__name__}.safetensors")
        except (OSError, NotImplementedError):  # no link support on this filesystem
            pass
    for out in links:
        with pytest.raises(slim.SlimError, match="input"):
            slim.plan_slim(str(src), output=str(out), overwrite=True)
    with pytest.raises(slim.SlimError, match=".safetensors"):
        slim.plan_slim(str(path), output=str(tmp_path / "x.ckpt"))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_accel")
    slim_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["slim", *argv])
    return slim_cli.run(args)


def test_cli_end_to_end(ckpt, tmp_path, capsys):
    path, _ = ckpt
    out = tmp_path / "custom.safetensors"
    assert _cli([str(path), "--dry-run"]) == 0
    assert not out.exists() and _files(tmp_path) == ["sd15.ckpt"]
    assert _cli([str(path), "--dtype", "bf16", "--keep-ema", "--drop-optimizer", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verified" in text and "OK" in text and "smaller" in text
    kept = safetensors_io.load_file(out)
    assert kept["model_ema.decay"].dtype == torch.bfloat16
    assert kept["model_ema.num_updates"].dtype == torch.int32
    assert _cli([str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("accel slim: error: output exists") and "\n" not in err
    assert _cli([str(path), "--out", str(out), "--overwrite", "--no-verify"]) == 0
    assert "verified" not in capsys.readouterr().out
    assert _cli([str(tmp_path / "missing.ckpt")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_cli_reports_missing_disk_in_one_line(ckpt, monkeypatch, capsys):
    path, _ = ckpt
    usage = shutil.disk_usage(path.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=0))
    assert _cli([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "not enough free disk space" in err and "needs" in err and "\n" not in err
