"""The adapter layer: the only part of Accel that imports the WebUI's ``modules`` or ``gradio``."""
