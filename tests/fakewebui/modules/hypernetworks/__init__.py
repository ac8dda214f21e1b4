"""Fake of modules/hypernetworks (only hypernetwork.py)."""
