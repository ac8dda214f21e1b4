"""Fake of modules/ui_settings.py: ``UiSettings.register_settings`` (fires on_ui_settings) and the type-
checked setters the Settings page uses (``run_settings_single`` refuses a value whose type differs from the
default)."""

from modules import script_callbacks, shared


class UiSettings:
    def register_settings(self):
        script_callbacks.ui_settings_callback()

    def run_settings_single(self, value, key):
        """Returns (applied: bool, current value). The real returns gradio updates for the same cases."""
        opts = shared.opts
        if not opts.same_type(value, opts.data_labels[key].default):
            return False, getattr(opts, key)
        if value is None or not opts.set(key, value):
            return False, getattr(opts, key)
        opts.save(shared.config_filename)
        return True, getattr(opts, key)

    def run_settings(self, values: dict):
        """Like the Apply button: every value must have its default's type (AssertionError otherwise)."""
        opts = shared.opts
        for key, value in values.items():
            expected = type(opts.data_labels[key].default).__name__
            assert opts.same_type(value, opts.data_labels[key].default), (
                f"Bad value for setting {key}: {value}; expecting {expected}"
            )
        changed = [key for key, value in values.items() if opts.set(key, value)]
        opts.save(shared.config_filename)
        return changed
