"""Fake of the AUTOMATIC1111 WebUI v1.10.1 ``modules`` package (see tests/fakewebui/README.md)."""
