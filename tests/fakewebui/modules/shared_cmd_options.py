"""Fake of modules/shared_cmd_options.py. Arguments come from $FAKE_WEBUI_ARGS (shlex-split), not sys.argv."""

import os
import shlex

from modules import cmd_args
from modules.paths_internal import data_path, extensions_dir, models_path, script_path  # noqa: F401

parser = cmd_args.parser
cmd_opts = parser.parse_args(shlex.split(os.environ.get("FAKE_WEBUI_ARGS", "")))
cmd_opts.webui_is_non_local = cmd_opts.listen
