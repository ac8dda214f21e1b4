"""Fake of modules/paths.py (re-exports paths_internal; no repositories to locate)."""

from modules.paths_internal import (  # noqa: F401
    cwd,
    data_path,
    extensions_builtin_dir,
    extensions_dir,
    models_path,
    script_path,
)
