"""Fake of modules/scripts.py: ``load_scripts()`` as in v1.10.1 (clears all callbacks, then executes every
top-level ``scripts/*.py`` of the WebUI root and each active extension, sorted by name, with the extension
root put first on sys.path only while its file runs and ``current_basedir`` set). Script dependency metadata
is not read. ``Script`` classes found in the files are collected in ``scripts_data``; ``ScriptRunner``
instantiates them like v1.10.1 (AlwaysVisible ones are "alwayson") and runs the processing hooks of the
alwayson scripts that override them, in callback order, each call wrapped so an exception is reported
(``errors.report``) and processing goes on. No UI: ``p.script_args`` is passed whole (``args_from``/``args_to``
stay None), and there are no selectable-script runs, before_component/after_component or on_mask_blend."""

import inspect
import os
import sys
from collections import namedtuple

from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    """The hooks v1.10.1 calls during processing; each default does nothing (and is skipped by the runner)."""

    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        """First thing process_images does, before override_settings are applied."""

    def process(self, p, *args):
        """In process_images_inner, after override_settings are set and the prompts and seeds are set up."""

    def before_process_batch(self, p, *args, **kwargs):
        """Per batch, before extra networks are parsed; kwargs: batch_number, prompts, seeds, subseeds."""

    def process_batch(self, p, *args, **kwargs):
        """Per batch, just before the conds are computed; same kwargs as before_process_batch."""

    def post_sample(self, p, ps: PostSampleArgs, *args):
        """After sampling, before the VAE decode."""

    def postprocess_batch(self, p, *args, **kwargs):
        """Per batch after the decode, before the infotexts are made; kwargs: batch_number, images."""

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        """Like postprocess_batch with the images as a list; kwargs: batch_number."""

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        """Per image, before it gets its infotext."""

    def postprocess(self, p, processed, *args):
        """After every batch, with the Processed result."""


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
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.callback_map = {}

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.callback_map.clear()

    def ordered_scripts(self, method_name):
        """The alwayson scripts whose class overrides ``method_name``, in (user-sortable) callback order; the
        list is cached per hook until the number of alwayson scripts changes."""
        category = f"script_{method_name}"
        count, callbacks = self.callback_map.get(category, (-1, None))
        if callbacks is None or count != len(self.alwayson_scripts):
            callbacks = []
            for script in self.alwayson_scripts:
                if getattr(script.__class__, method_name, None) == getattr(Script, method_name, None):
                    continue
                script_callbacks.add_callback(
                    callbacks, script, category=category, name=script.__class__.__name__, filename=script.filename
                )
            callbacks = script_callbacks.sort_callbacks(category, callbacks)
            self.callback_map[category] = len(self.alwayson_scripts), callbacks
        return [c.callback for c in callbacks]

    def _run_hook(self, method_name, p, *args, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, method_name)(p, *args, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run_hook("before_process", p)

    def process(self, p):
        self._run_hook("process", p)

    def before_process_batch(self, p, **kwargs):
        self._run_hook("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run_hook("process_batch", p, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._run_hook("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._run_hook("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._run_hook("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._run_hook("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._run_hook("postprocess", p, processed)


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
