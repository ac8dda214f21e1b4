"""Accel's per-image hooks: image boundaries for the live stats and, when ``accel_infotext`` is on, the Accel
facts in each image's infotext. Everything is delegated to ``lib_accel.webui``.

``process`` runs once per job after the WebUI has set the job's ``override_settings`` (without their onchange),
``process_batch`` just before the text encoder, ``postprocess_batch`` after the VAE decode and before the
infotexts are written (``modules/processing.py``, v1.10.1). The infotext's toggles are the ones Accel applied,
not the ones an ``override_settings`` claims; ``process`` says once in the console which accel_* overrides a
generation does not apply.
"""

from modules import scripts

from lib_accel.webui import extension, live_stats


class AccelImageHooks(scripts.Script):
    def title(self):
        return "Accel"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        extension.get().note_overrides(getattr(p, "override_settings", None))

    def process_batch(self, p, *args, **kwargs):
        live_stats.get().begin_image(p)

    def postprocess_batch(self, p, *args, **kwargs):
        live_stats.get().end_image(p)
