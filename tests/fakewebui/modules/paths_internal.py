"""Fake of modules/paths_internal.py. The data directory comes from $FAKE_WEBUI_DATA_DIR (the harness sets
it to a temporary directory) instead of --data-dir, so tests never write into the repository."""

import os
import tempfile

modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)
cwd = os.getcwd()

sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file

data_path = os.environ.get("FAKE_WEBUI_DATA_DIR") or os.path.join(tempfile.gettempdir(), "fakewebui-data")
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
config_states_dir = os.path.join(data_path, "config_states")
default_output_dir = os.path.join(data_path, "outputs")
