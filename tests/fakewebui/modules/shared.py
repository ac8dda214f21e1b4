"""Fake of modules/shared.py: the module-level globals; ``sd_model`` is a property (see shared_items.Shared).
``opts``, ``state`` and ``device`` are None until modules.shared_init.initialize() runs (as in the real)."""

import sys

from modules import options, shared_cmd_options, shared_items
from modules.paths_internal import (  # noqa: F401
    data_path,
    default_sd_model_file,
    extensions_builtin_dir,
    extensions_dir,
    models_path,
    script_path,
    sd_configs_path,
    sd_default_config,
    sd_model_file,
)

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

batch_cond_uncond = True
parallel_processing_allowed = True
config_filename = cmd_opts.ui_settings_file
hide_dirs = {"visible": not cmd_opts.hide_ui_dir_config}

demo = None
device = None
weight_load_location = None
xformers_available = False
hypernetworks = {}
loaded_hypernetworks = []
state = None
prompt_styles = None
face_restorers = []
options_templates = None
opts = None
restricted_opts = None
sd_model = None
settings_components = None
tab_names = []
sd_upscalers = []
clip_model = None
progress_print_out = sys.stdout
total_tqdm = None
mem_mon = None

options_section = options.options_section
OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML

list_checkpoint_tiles = shared_items.list_checkpoint_tiles
refresh_checkpoints = shared_items.refresh_checkpoints
reload_hypernetworks = shared_items.reload_hypernetworks


def ldm_print(*args, **kwargs):
    print(*args, **kwargs)


sys.modules[__name__].__class__ = shared_items.Shared
