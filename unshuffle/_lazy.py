"""Deferred imports for the heavy libraries (torch ~1 s, pandas ~0.25 s, scipy.optimize ~0.3 s here).

``from ._lazy import torch`` gives a stand-in that imports torch the first time one of its attributes is
used and then caches each attribute on itself, so module-level code can say ``torch.relu(...)`` as before
while ``import unshuffle`` and the CPU solve path (numpy + the C++ core) never load torch. Annotations
that name ``torch.Tensor`` are strings (``from __future__ import annotations``) and load nothing.

``loaded("torch")`` says whether a module has been imported by anyone (an object can only be a torch
tensor if torch is loaded, which lets checks avoid importing it).
"""
from __future__ import annotations

import importlib
import sys


_PROBES = frozenset({"__wrapped__", "__deepcopy__", "__copy__", "__getstate__", "__signature__", "__test__"})


class LazyModule:
    """Stands in for the module ``name`` until an attribute is first read."""

    def __init__(self, name: str):
        object.__setattr__(self, "_lazy_name", name)

    def __getattr__(self, attr: str):
        # Only called for attributes not cached yet (instance attributes are found first).
        if attr in _PROBES:
            raise AttributeError(attr)  # copy/inspect probes on the stand-in must not trigger the import
        value = getattr(importlib.import_module(self._lazy_name), attr)
        object.__setattr__(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r} ({'loaded' if loaded(self._lazy_name) else 'not loaded'})>"


def loaded(name: str) -> bool:
    """Whether module ``name`` is already imported in this process."""
    return name in sys.modules


torch = LazyModule("torch")
