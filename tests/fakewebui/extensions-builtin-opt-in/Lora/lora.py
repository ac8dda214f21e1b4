"""Fake of extensions-builtin/Lora/lora.py (v1.10.1): the old names other extensions import."""

import networks

available_loras = networks.available_networks
loaded_loras = networks.loaded_networks
