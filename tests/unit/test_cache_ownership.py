"""The compile cache folder is a user setting: Accel uses, clears and unpickles from only a folder it created.

Each test points the cache at a folder holding "user files" (a checkpoint, a LoRA folder, links to outside) and
checks nothing of the user's is deleted, followed or loaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import lib_accel.compile.cache as cache
from lib_accel.compile import CompiledModule, CompileOptions, CompileWorker


@pytest.fixture(autouse=True)
def _inductor_env(monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # use_cache_dir sets them: restore afterwards
        monkeypatch.setenv(name, os.environ.get(name, ""))


def user_folder(base: Path) -> Path:
    """What a user's models folder looks like, including names that look like inductor's (``ab``, ``locks``)."""
    models = base / "models"
    (models / "Lora").mkdir(parents=True)
    (models / "Lora" / "style.safetensors").write_bytes(b"L" * 300)
    (models / "sd15.safetensors").write_bytes(b"C" * 500)
    (models / "ab").mkdir()
    (models / "ab" / "notes.txt").write_text("mine")
    (models / "locks").mkdir()
    return models


def outside(base: Path) -> Path:
    target = base / "elsewhere"
    (target / "deep").mkdir(parents=True)
    (target / "deep" / "precious.bin").write_bytes(b"P" * 700)
    (target / "top.bin").write_bytes(b"T" * 70)
    return target


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_clearing_a_folder_accel_did_not_create_deletes_nothing(tmp_path):
    models = user_folder(tmp_path)
    before = files_under(models)
    with pytest.raises(RuntimeError, match="not created by Accel"):
        cache.clear_cache(str(models))
    assert files_under(models) == before and (models / "locks").is_dir()


def test_a_non_empty_foreign_folder_is_never_adopted(tmp_path):
    models = user_folder(tmp_path)
    before = files_under(models)
    with pytest.raises(RuntimeError, match="not created by Accel"):
        cache.use_cache_dir(str(models))
    assert files_under(models) == before, "no marker or anything else written into the user's folder"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] != str(models), "inductor is not pointed at it"


def test_new_and_empty_folders_are_created_or_marked_as_accels(tmp_path):
    new, empty = tmp_path / "new" / "cache", tmp_path / "empty"
    empty.mkdir()
    assert cache.claim(str(new)) == "created" and cache.claim(str(empty)) == "marked"
    for folder in (new, empty):
        assert cache.is_accel_cache(str(folder))
        assert (folder / cache.MARKER).read_text(encoding="utf-8").startswith('{"created_by": "Accel"')
    assert cache.claim(str(new)) == "", "an Accel folder is used as it is"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RuntimeError, match="not a folder"):
        cache.claim(str(tmp_path / "file"))


def test_a_link_posing_as_the_marker_does_not_make_a_folder_accels(tmp_path):
    real = tmp_path / "real"
    cache.claim(str(real))
    models = user_folder(tmp_path)
    (models / cache.MARKER).symlink_to(real / cache.MARKER)
    assert not cache.is_accel_cache(str(models))
    before = files_under(models)
    with pytest.raises(RuntimeError, match="not created by Accel"):
        cache.clear_cache(str(models))
    with pytest.raises(RuntimeError, match="not created by Accel"):
        cache.claim(str(models))
    assert files_under(models) == before and (models / cache.MARKER).is_symlink()


def test_the_default_folder_of_an_older_version_is_adopted_only_when_it_holds_cache_entries_only(tmp_path):
    old = tmp_path / "accel-cache" / "inductor"
    (old / "fxgraph").mkdir(parents=True)
    (old / "q6").mkdir()
    assert cache.claim(str(old), adopt_cache_only=True) == "adopted" and cache.is_accel_cache(str(old))
    mixed = tmp_path / "mixed"
    (mixed / "fxgraph").mkdir(parents=True)
    (mixed / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="not created by Accel"):
        cache.claim(str(mixed), adopt_cache_only=True)
    assert not (mixed / cache.MARKER).exists()


def test_clear_deletes_only_cache_entries_and_never_follows_links(tmp_path):
    folder = tmp_path / "cache"
    cache.use_cache_dir(str(folder))
    target = outside(tmp_path)
    before_outside = files_under(target)
    for name, size in (("fxgraph/a/graph.bin", 100), ("q6/kernel.so", 20), ("precompiled/g.accel-graph", 30),
                       (cache.VEC_ISA_FILE, 4), ("triton/0/k.cubin", 6)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"c" * size)
    (folder / "my-lora.safetensors").write_bytes(b"U" * 9)  # the user's, put into Accel's folder
    (folder / "mine").mkdir()
    (folder / "fxgraph" / "link-to-elsewhere").symlink_to(target, target_is_directory=True)
    (folder / "precompiled" / "link.bin").symlink_to(target / "top.bin")
    (folder / "zz").symlink_to(target / "deep", target_is_directory=True)  # inductor-like name, but a link: kept
    assert cache.cache_size(str(folder)) == 160, "links count as nothing, user entries are not the cache's"
    done = cache.clear_cache(str(folder))
    assert done["freed_bytes"] == 160 and done["errors"] == [] and done["kept"] == ["mine", "my-lora.safetensors", "zz"]
    assert files_under(target) == before_outside, "nothing behind a link was deleted"
    assert sorted(p.name for p in folder.iterdir()) == sorted([cache.MARKER, "mine", "my-lora.safetensors", "zz"])
    assert cache.is_accel_cache(str(folder)) and cache.cache_size(str(folder)) == 0


def test_the_setting_is_resolved_against_the_extension_folder_and_home(tmp_path, monkeypatch):
    root = str(tmp_path / "ext")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.resolve_cache_dir("", root) == os.path.join(root, "accel-cache", "inductor")
    assert cache.resolve_cache_dir("  ", root) == os.path.join(root, "accel-cache", "inductor")
    assert cache.resolve_cache_dir("~/cc", root) == str(tmp_path / "home" / "cc")
    assert cache.resolve_cache_dir(".", root) == root
    assert cache.resolve_cache_dir("models/../c", root) == os.path.join(root, "c")
    assert cache.resolve_cache_dir(str(tmp_path / "abs"), root) == str(tmp_path / "abs")


class _Runs:
    """A pickle that, when loaded, creates a file: what a planted 'precompiled graph' could do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _module(folder: Path, logs: list) -> CompiledModule:
    net = torch.nn.Linear(2, 2)
    return CompiledModule(net, "net", CompileOptions(background=False, precompile_dir=str(folder)),
                          log=logs.append, worker=CompileWorker("trust"))


def test_graphs_are_never_unpickled_from_a_folder_accel_did_not_create(tmp_path):
    models = user_folder(tmp_path)
    folder = models / "precompiled"
    folder.mkdir()
    planted, ran = folder / "graph.accel-graph", tmp_path / "code-ran"
    planted.write_bytes(pickle.dumps(_Runs(ran)))
    logs = []
    compiled = _module(folder, logs)
    assert "not created by Accel" in compiled.precompiler.refusal()
    assert compiled.precompiler.path_for((torch.zeros(1, 2),), {}) is None, "nothing saved or loaded there"
    assert compiled.precompiler.load(str(planted), "1x2", (torch.zeros(1, 2),), {}) is None
    assert not ran.exists(), "the planted pickle was not loaded"
    assert planted.exists(), "a file Accel does not own is not removed either"
    assert any("not created by Accel" in line for line in logs)


def test_a_linked_graph_file_in_accels_folder_is_not_loaded(tmp_path):
    root = tmp_path / "cache"
    cache.claim(str(root))
    folder = root / "precompiled"
    folder.mkdir()
    evil, ran = tmp_path / "evil.pickle", tmp_path / "code-ran"
    evil.write_bytes(pickle.dumps(_Runs(ran)))
    (folder / "graph.accel-graph").symlink_to(evil)
    logs = []
    compiled = _module(folder, logs)
    assert "not created by Accel" not in compiled.precompiler.refusal()
    assert compiled.precompiler.load(str(folder / "graph.accel-graph"), "1x2", (torch.zeros(1, 2),), {}) is None
    assert not ran.exists() and evil.exists()
    assert any("not a regular file" in line for line in logs)
    (root / "linked").symlink_to(user_folder(tmp_path), target_is_directory=True)  # a graph folder that is a link
    assert "a link" in cache.trust_refusal(str(root / "linked"))
    assert cache.trust_refusal(str(folder)) == ""
