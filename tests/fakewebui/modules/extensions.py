"""Fake of modules/extensions.py: Extension objects, list_extensions(), active(), find_extension().

The real scans extensions_dir and extensions-builtin; the fake also takes directories listed in
``extra_extension_dirs`` (set by the test harness) so an extension can be loaded in place from its checkout.
"""

import os

from modules import errors, shared
from modules.paths_internal import extensions_builtin_dir, extensions_dir

extensions = []
extension_paths = {}
extra_extension_dirs = []  # fake-only: [(path, canonical name or None)]


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False, canonical_name=None):
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin
        self.canonical_name = (canonical_name or name).lower().strip()

    def list_files(self, subdir, extension):
        from modules import scripts

        dirpath = os.path.join(self.path, subdir)
        if not os.path.isdir(dirpath):
            return []
        res = [
            scripts.ScriptFile(self.path, filename, os.path.join(dirpath, filename))
            for filename in sorted(os.listdir(dirpath))
        ]
        return [x for x in res if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


def active():
    if shared.cmd_opts.disable_all_extensions or shared.opts.disable_all_extensions == "all":
        return []
    if shared.cmd_opts.disable_extra_extensions or shared.opts.disable_all_extensions == "extra":
        return [x for x in extensions if x.enabled and x.is_builtin]
    return [x for x in extensions if x.enabled]


def list_extensions():
    extensions.clear()
    extension_paths.clear()
    found = []
    for dirname, is_builtin in ((extensions_builtin_dir, True), (extensions_dir, False)):
        if os.path.isdir(dirname):
            for name in sorted(os.listdir(dirname)):
                path = os.path.join(dirname, name)
                if os.path.isdir(path):
                    found.append((name, path, is_builtin, None))
    for path, canonical_name in extra_extension_dirs:
        found.append(
            (os.path.basename(os.path.normpath(path)), os.path.realpath(path), False, canonical_name)
        )
    disabled = shared.opts.disabled_extensions or []
    for name, path, is_builtin, canonical_name in found:
        try:
            extension = Extension(
                name, path, enabled=name not in disabled, is_builtin=is_builtin, canonical_name=canonical_name
            )
        except Exception:
            errors.report(f"Error listing extension {name}", exc_info=True)
            continue
        extensions.append(extension)
        extension_paths[extension.path] = extension


def find_extension(filename):
    parentdir = os.path.dirname(os.path.realpath(filename))
    while parentdir != filename:
        extension = extension_paths.get(parentdir)
        if extension is not None:
            return extension
        filename = parentdir
        parentdir = os.path.dirname(filename)
    return None
