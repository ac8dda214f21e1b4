"""Fake of modules/scripts.py: ``load_scripts()`` as in v1.10.1 (clears all callbacks, then executes every
top-level ``scripts/*.py`` of the WebUI root and each active extension, sorted by name, with the extension
root put first on sys.path only while its file runs and ``current_basedir`` set). Script dependency metadata
is not read. ``Script`` classes found in the files are collected in ``scripts_data`` but never run (no
txt2img UI)."""

import inspect
import os
import sys
from collections import namedtuple

from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()


class Script:
    name = None
    filename = None
    is_txt2img = False
    is_img2img = False

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True


current_basedir = paths.script_path


def basedir():
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
postprocessing_scripts_data = []


def list_scripts(scriptdirname, extension, *, include_extensions=True):
    res = []
    root = os.path.join(paths.script_path, scriptdirname)
    if os.path.isdir(root):
        for filename in sorted(os.listdir(root)):
            path = os.path.join(root, filename)
            if os.path.isfile(path) and os.path.splitext(filename)[1].lower() == extension:
                res.append(ScriptFile(paths.script_path, filename, path))
    if include_extensions:
        for ext in extensions.active():
            res += ext.list_files(scriptdirname, extension)
    return res


class ScriptRunner:
    def __init__(self):
        self.scripts = []

    def initialize_scripts(self, is_img2img):
        self.scripts = [x.script_class() for x in scripts_data]


scripts_txt2img = ScriptRunner()
scripts_img2img = ScriptRunner()


def load_scripts():
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()

    syspath = sys.path
    for scriptfile in list_scripts("scripts", ".py"):
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for script_class in module.__dict__.values():
                if (
                    inspect.isclass(script_class)
                    and issubclass(script_class, Script)
                    and script_class is not Script
                ):
                    scripts_data.append(
                        ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module)
                    )
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path

    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


reload_scripts = load_scripts
