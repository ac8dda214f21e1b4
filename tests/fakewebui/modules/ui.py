"""Fake of modules/ui.py ``create_ui()``: the callback order of the real (settings registered via
on_ui_settings, scripts initialised, then on_ui_tabs); returns a ``FakeBlocks`` instead of a gradio Blocks."""

from modules import script_callbacks, scripts, shared, ui_settings


class FakeBlocks:
    def __init__(self, tabs):
        self.tabs = tabs  # [(component, title, elem_id)]

    def close(self):
        pass


def create_ui():
    settings = ui_settings.UiSettings()
    settings.register_settings()
    scripts.scripts_current = scripts.scripts_txt2img
    scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts.scripts_img2img.initialize_scripts(is_img2img=True)
    interfaces = [(None, "txt2img", "txt2img"), (None, "img2img", "img2img")]
    interfaces += script_callbacks.ui_tabs_callback()
    interfaces += [(None, "Settings", "settings"), (None, "Extensions", "extensions")]
    shared.tab_names = [label for _, label, _ in interfaces]
    return FakeBlocks(interfaces)
