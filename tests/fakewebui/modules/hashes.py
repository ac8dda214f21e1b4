"""Fake of modules/hashes.py: sha256 of a file, cached by title (the real cache lives in cache.json)."""

import hashlib
import os

cache = {}  # title -> {"mtime": float, "sha256": str}


def calculate_sha256(filename):
    with open(filename, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    entry = cache.get(title)
    if entry is None or os.path.getmtime(filename) > entry["mtime"]:
        return None
    return entry["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    found = sha256_from_cache(filename, title)
    if found is not None:
        return found
    if not os.path.isfile(filename):
        return None
    print(f"Calculating sha256 for {filename}: ", end="")
    value = calculate_sha256(filename)
    print(f"{value}")
    cache[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    return value
