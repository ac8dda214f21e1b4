"""Shared fixtures: ``fake_webui`` (tests/fakewebui) boots a small fake of the WebUI v1.10.1 in-process."""

from fakewebui.harness import fake_webui  # noqa: F401
