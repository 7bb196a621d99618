"""The import paths of md4 0.2, before the modules moved into ``core/``, ``runs/``, ``generation/`` and
``training/``: ``import md4.diffusion`` and the like keep working, giving the module (or, for a module that was
split, the modules) that now holds those names."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MOVED: dict[str, tuple[str, ...]] = {
    "md4.diffusion": ("md4.core.md4", "md4.core.masked", "md4.core.noise", "md4.core.units", "md4.core.tokens"),
    "md4.genmd4": ("md4.core.genmd4",),
    "md4.schedules": ("md4.core.schedules", "md4.core.token_schedule"),
    "md4.tokens": ("md4.core.tokens",),
    "md4.generate": ("md4.generation.text", "md4.generation.images"),
    "md4.image_outputs": ("md4.generation.pictures",),
    "md4.schedule_plot": ("md4.generation.schedule_plot",),
    "md4.train": ("md4.training.trainer",),
    "md4.run": ("md4.runs.directory",),
    "md4.checkpoint": ("md4.runs.checkpoints",),
    "md4.metrics_log": ("md4.runs.metrics_log",),
}


class _Joined(types.ModuleType):
    """A module that was split: each name is looked up in the modules that now hold its parts, in turn."""

    def __init__(self, name: str, parts: tuple[str, ...]):
        super().__init__(name, f"md4 0.2's {name}, now split into {', '.join(parts)}.")
        self._parts = parts

    def __getattr__(self, attr: str):
        for part in self._parts:
            module = importlib.import_module(part)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __call__(self, *args, **kwargs):
        """``md4.generate`` was a module and, in ``md4``'s namespace, a function of the same name: importing the
        old module path rebinds ``md4.generate`` to this module, which therefore still generates when called."""
        name = self.__name__.rsplit(".", 1)[1]
        return getattr(importlib.import_module(self._parts[0]), name)(*args, **kwargs)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        parts = MOVED[spec.name]
        return importlib.import_module(parts[0]) if len(parts) == 1 else _Joined(spec.name, parts)

    def exec_module(self, module):
        """The module is the new one, already executed."""


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
