"""Fake of modules/cmd_args.py: the subset of v1.10.1 flags the WebUI code paths faked here read (same names,
types and defaults)."""

import argparse
import os

from modules.paths_internal import data_path, models_path, sd_model_file

parser = argparse.ArgumentParser()
for flag in (
    "--skip-torch-cuda-test",
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-version-check",
    "--do-not-download-clip",
    "--no-half",
    "--no-half-vae",
    "--medvram",
    "--medvram-sdxl",
    "--lowvram",
    "--lowram",
    "--upcast-sampling",
    "--xformers",
    "--force-enable-xformers",
    "--xformers-flash-attention",
    "--opt-split-attention",
    "--opt-sub-quad-attention",
    "--opt-split-attention-invokeai",
    "--opt-split-attention-v1",
    "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention",
    "--disable-opt-split-attention",
    "--disable-nan-check",
    "--use-ipex",
    "--hide-ui-dir-config",
    "--freeze-settings",
    "--opt-channelslast",
    "--api",
    "--nowebui",
    "--no-download-sd-model",
    "--skip-load-model-at-start",
    "--api-server-stop",
    "--listen",
    "--dump-sysinfo",
    "--test-server",
    "--ui-debug-mode",
    "--no-gradio-queue",
    "--disable-all-extensions",
    "--disable-extra-extensions",
):
    parser.add_argument(flag, action="store_true")
parser.add_argument("--data-dir", type=str, default=data_path)
parser.add_argument("--models-dir", type=str, default=None)
parser.add_argument("--ckpt", type=str, default=sd_model_file)
parser.add_argument("--ckpt-dir", type=str, default=None)
parser.add_argument("--vae-dir", type=str, default=None)
parser.add_argument("--vae-path", type=str, default=None)
parser.add_argument("--embeddings-dir", type=str, default=os.path.join(data_path, "embeddings"))
parser.add_argument("--hypernetwork-dir", type=str, default=os.path.join(models_path, "hypernetworks"))
parser.add_argument("--precision", type=str, choices=["full", "half", "autocast"], default="autocast")
parser.add_argument("--use-cpu", nargs="+", default=[], type=str.lower)
parser.add_argument("--freeze-settings-in-sections", type=str, default=None)
parser.add_argument("--freeze-specific-settings", type=str, default=None)
parser.add_argument("--ui-settings-file", type=str, default=os.path.join(data_path, "config.json"))
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--gradio-auth", type=str, default=None)
parser.add_argument("--gradio-auth-path", type=str, default=None)
parser.add_argument("--device-id", type=str, default=None)
parser.add_argument("--port", type=int, default=None)
parser.add_argument("--server-name", type=str, default=None)
parser.add_argument("--sub-quad-q-chunk-size", type=int, default=1024)
parser.add_argument("--sub-quad-kv-chunk-size", type=int, default=None)
parser.add_argument("--sub-quad-chunk-threshold", type=int, default=None)
parser.add_argument("--loglevel", type=str, default=None)
