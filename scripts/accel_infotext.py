"""Accel's per-image hooks: image boundaries for the live stats and, when ``accel_infotext`` is on, the Accel
facts in each image's infotext. Everything is delegated to ``lib_accel.webui.live_stats``.

``process_batch`` runs just before the text encoder, ``postprocess_batch`` after the VAE decode and before the
infotexts are written (``modules/processing.py``, v1.10.1).
"""

from modules import scripts

from lib_accel.webui import live_stats


class AccelImageHooks(scripts.Script):
    def title(self):
        return "Accel"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_batch(self, p, *args, **kwargs):
        live_stats.get().begin_image(p)

    def postprocess_batch(self, p, *args, **kwargs):
        live_stats.get().end_image(p)
