"""What a pruning experiment compares: named selections (score column + strategy), random baselines and full data."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RANDOM = "random"
RANDOM_BALANCED = "random (class-balanced)"
FULL_DATA = "full"


@dataclass(frozen=True)
class Selection:
    """One way of pruning: keep a fraction of the training split by `strategy` on the score column `score`.

    Args:
        score (`str` or None): the score column (None for `"random"`).
        strategy (`str`): a `select_by_score` strategy (`hf_influence.selection.list_strategies()`).
        class_balanced (`bool`, defaults to False): select within each class, keeping the class shares.
        options (`Mapping`, *optional*): more `select_by_score` keyword arguments (e.g. `{"beta": 0.1}` for CCS).
        name (`str`, *optional*): the label in tables and plots (default `"score:strategy"`, with
            `" (class-balanced)"` appended when balanced).

    `Selection.parse("el2n:easiest")` and `Selection.parse("aum:ccs:balanced")` read the short form the recipes
    take on the command line.
    """

    score: str | None
    strategy: str
    class_balanced: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        from ..selection import get_strategy

        spec = get_strategy(self.strategy)  # unknown strategies fail here, with the valid names
        if spec.needs_column and not self.score:
            raise ValueError(f"Selection with strategy {self.strategy!r} needs a score column.")
        spec.check_options(self.options)
        object.__setattr__(self, "options", dict(self.options))

    @property
    def label(self) -> str:
        """The name shown in results (`name`, or one built from score, strategy and balance)."""
        if self.name:
            return self.name
        if self.strategy == "random" and self.score is None:
            return RANDOM_BALANCED if self.class_balanced else RANDOM
        return f"{self.score}:{self.strategy}" + (" (class-balanced)" if self.class_balanced else "")

    @property
    def slug(self) -> str:
        """A file-name-safe form of `label`."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    @property
    def is_random(self) -> bool:
        return self.strategy == "random" and self.score is None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "strategy": self.strategy,
                "class_balanced": self.class_balanced, "options": dict(self.options)}

    @classmethod
    def parse(cls, spec: Any, class_balanced: bool = False, options: Mapping[str, Any] | None = None) -> Selection:
        """A `Selection` from a `Selection`, a `(score, strategy)` tuple or a `"score:strategy[:balanced]"` string."""
        if isinstance(spec, Selection):
            return spec
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(spec[0], spec[1], class_balanced, dict(options or {}))
        if isinstance(spec, str):
            parts = spec.split(":")
            if len(parts) in (2, 3) and all(parts) and (len(parts) == 2 or parts[2] == "balanced"):
                return cls(parts[0], parts[1], class_balanced or len(parts) == 3, dict(options or {}))
        raise ValueError(f"Cannot read the selection {spec!r}: pass a Selection, a (score, strategy) tuple or a "
                         "'score:strategy' string (append ':balanced' for class-balanced).")


def random_selection(class_balanced: bool = False) -> Selection:
    """The random baseline (plain or class-balanced)."""
    return Selection(None, "random", class_balanced)
