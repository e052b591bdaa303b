"""Task families: prompts whose answers a program can verify, locate the first error in, and correct.

A family is one module in this package that defines a ``TaskFamily`` subclass and registers an
instance with ``@register``; ``get_family(name)`` imports every module here once, so adding a
family touches nothing else. The steering loop (``localpref.steering``), the tiny task models
(``localpref.tasks.pretrain``), the trainer's steering evaluation and the experiments only ever
talk to a family through the ``TaskFamily`` interface in ``localpref.tasks.base``.

    lists   lists of items under a checkable rule ("List 4 prime numbers greater than 40.")
    ranges  the lists rules a tiny model can learn: even/odd numbers in a range, in three phrasings
    arith   a chain of additions and subtractions, one operation per line
    style   a house style, British spelling, in short answers where SmolLM2 writes American ("colour", not "color")
"""

from __future__ import annotations

import importlib
import pkgutil

from localpref.tasks.base import Task, TaskFamily, Unit

_REGISTRY: dict[str, TaskFamily] = {}
_NOT_FAMILIES = {"base", "pretrain"}  # modules of this package that define no family


def register(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: register one instance of a family under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task family {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_FAMILIES:
            importlib.import_module(f"{__name__}.{info.name}")


def family_names() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def get_family(name: str) -> TaskFamily:
    """The registered family called ``name`` (ValueError listing the known ones otherwise)."""
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def solve(meta: dict) -> str:
    """A whole correct answer for the task of ``meta`` (a trajectory's ``meta.task``): its family's
    ``solve``. What ``localpref.data.collected`` needs for rewrites, passed by whoever calls it,
    since the data layer imports no task family."""
    return get_family(meta["family"]).solve(meta)


__all__ = ["Task", "TaskFamily", "Unit", "family_names", "get_family", "register", "solve"]
