"""Runtime settings applied to a loaded model: precision and torch backend toggles."""
