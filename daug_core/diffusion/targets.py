"""Guidance targets: a class and a direction (``+c`` toward class c, ``-c`` away from it).

Parsed and printed here, without torch, so settings (:mod:`daug_core.diffusion.heatmap_settings`)
can
check targets where the CLI builds them; :mod:`daug_core.diffusion.guidance` turns them into
tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from daug_core.labels import SUPER_CLASS_NAMES
from daug_core.settings import ConfigError

Direction = Literal[1, -1]


class TargetError(ConfigError):
    """A target string or index does not name a known class and direction."""


@dataclass(frozen=True)
class Target:
    """A guidance target: ``direction`` +1 toward ``class_index``, -1 away from it."""

    class_index: int
    direction: Direction
    class_name: str

    @classmethod
    def parse(cls, text: str, class_names: Sequence[str] = SUPER_CLASS_NAMES) -> Target:
        """``"+No Finding"`` / ``"-Pleural"``; the sign is required, names match exactly or,
        failing that, case-insensitively."""
        raw = text.strip()
        if len(raw) < 2 or raw[0] not in "+-":
            raise TargetError(f"target {text!r} must start with '+' or '-' then a class name")
        direction: Direction = 1 if raw[0] == "+" else -1
        name = raw[1:].strip()
        names = list(class_names)
        if name in names:
            index = names.index(name)
        else:
            folded = [n.casefold() for n in names]
            if name.casefold() not in folded:
                raise TargetError(f"target {text!r}: unknown class {name!r}; known: {names}")
            index = folded.index(name.casefold())
        return cls(class_index=index, direction=direction, class_name=names[index])

    def __str__(self) -> str:
        return f"{'+' if self.direction == 1 else '-'}{self.class_name}"


def all_targets(
    class_names: Sequence[str] = SUPER_CLASS_NAMES, direction: Direction = 1
) -> tuple[Target, ...]:
    """One target per class in ``direction``; with +1 these are DAug's K = 7 heatmap targets."""
    return tuple(
        Target(class_index=i, direction=direction, class_name=name)
        for i, name in enumerate(class_names)
    )
