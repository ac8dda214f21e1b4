"""Fake of extensions-builtin/Lora/scripts/lora_script.py (v1.10.1): the parts that touch what other extensions
see - the torch.nn patches (made when this file runs, undone on script unload), layer names on every model
load, and the ``lora_functional`` option. Not faked: extra-network pages, the prompt syntax, the API routes."""

import lora  # noqa: F401
import lora_patches
import networks
from modules import script_callbacks, shared


def unload():
    networks.originals.undo()


networks.originals = lora_patches.LoraPatches()

script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
script_callbacks.on_script_unloaded(unload)

shared.options_templates.update(shared.options_section(("compatibility", "Compatibility"), {
    "lora_functional": shared.OptionInfo(False, "Lora/Networks: use old method that takes longer when you have "
                                                "multiple Loras active"),
}))
