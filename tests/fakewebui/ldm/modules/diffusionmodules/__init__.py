"""Fake of the package of the same name (see tests/fakewebui/README.md)."""
