"""Every monkeypatch Accel makes in the WebUI goes through :class:`PatchOwner` and ``modules.patches``.

``modules.patches`` keeps originals in a module-level dict that survives Reload UI (the WebUI does not
re-import ``modules``), so patching is made idempotent here: replacing an existing Accel patch first
undoes it, and :meth:`PatchOwner.undo_all` removes exactly the patches recorded under Accel's key.
"""

from __future__ import annotations

PATCH_KEY = "accel"


class PatchOwner:
    def __init__(self, key: str = PATCH_KEY):
        self.key = key

    def _patches(self):
        from modules import patches
        return patches

    def patch(self, obj: object, field: str, replacement: object) -> object:
        """Replace ``obj.field`` (replacing Accel's earlier patch if any); returns the WebUI's original."""
        patches = self._patches()
        if patches.original(self.key, obj, field) is not None:
            patches.undo(self.key, obj, field)
        return patches.patch(self.key, obj, field, replacement)

    def original(self, obj: object, field: str) -> object:
        """The unpatched value of ``obj.field`` (the current one when Accel has not patched it)."""
        found = self._patches().original(self.key, obj, field)
        return found if found is not None else getattr(obj, field)

    def is_patched(self, obj: object, field: str) -> bool:
        return self._patches().original(self.key, obj, field) is not None

    def undo(self, obj: object, field: str) -> None:
        patches = self._patches()
        if patches.original(self.key, obj, field) is not None:
            patches.undo(self.key, obj, field)

    def forget(self, obj: object, field: str) -> None:
        """Drop the record of Accel's patch without restoring: someone already replaced Accel's value (say
        another extension's own undo put torch's back), and restoring would put a stale value over theirs."""
        self._patches().originals.get(self.key, {}).pop((obj, field), None)

    def undo_all(self) -> int:
        """Undo every patch recorded under this owner's key; returns how many were undone."""
        patches = self._patches()
        recorded = list(patches.originals.get(self.key, {}).keys())
        for obj, field in recorded:
            patches.undo(self.key, obj, field)
        return len(recorded)

    def count(self) -> int:
        return len(self._patches().originals.get(self.key, {}))
