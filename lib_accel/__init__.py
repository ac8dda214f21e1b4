"""Accel: attention kernels, compile management and runtime toggles for the AUTOMATIC1111 WebUI.

The core (every module outside ``lib_accel.webui``) imports only torch and the standard library.
``lib_accel.webui`` is the only place that imports the WebUI's ``modules`` or ``gradio``.
"""

__version__ = "0.1.0"
