"""What a pruning experiment compares: named selections (score column + strategy), random baselines and full data."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RANDOM = "random"
BALANCED_SUFFIX = " (class-balanced)"  # appended to the label of a selection made within each class
RANDOM_BALANCED = RANDOM + BALANCED_SUFFIX
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
        return f"{self.score}:{self.strategy}" + (BALANCED_SUFFIX if self.class_balanced else "")

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
        """A `Selection` from a `Selection`, a `(score, strategy)` tuple or a short-form string.

        The string is `"score:strategy"`, then optionally `":balanced"`, then any number of `":key=value"` strategy
        options, e.g. `"el2n:ccs:balanced:beta=0.3"` or `"el2n:window:offset=0.1"`. Values are read as int, float,
        `true`/`false`, `none` or else a string. Options written in the string override `options` and appear in the
        label (`"el2n:ccs[beta=0.3] (class-balanced)"`), so runs with different options get different run ids.
        """
        if isinstance(spec, Selection):
            return spec
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(spec[0], spec[1], class_balanced, dict(options or {}))
        if isinstance(spec, str):
            parts = spec.split(":")
            balanced = len(parts) > 2 and parts[2] == "balanced"
            extra = parts[3 if balanced else 2:]
            if len(parts) >= 2 and all(parts) and all(_is_option(p) for p in extra):
                written = dict(_read_option(p) for p in extra)
                if len(written) < len(extra):
                    raise ValueError(f"The selection {spec!r} sets an option twice.")
                balanced = class_balanced or balanced
                name = None
                if written:
                    shown = ",".join(f"{k}={v}" for k, v in written.items())
                    name = f"{parts[0]}:{parts[1]}[{shown}]" + (BALANCED_SUFFIX if balanced else "")
                return cls(parts[0], parts[1], balanced, {**dict(options or {}), **written}, name=name)
        raise ValueError(f"Cannot read the selection {spec!r}: pass a Selection, a (score, strategy) tuple or a "
                         "'score:strategy' string (append ':balanced' for class-balanced, then ':key=value' for "
                         "strategy options, e.g. 'el2n:ccs:balanced:beta=0.3').")


def _is_option(part: str) -> bool:
    key, sep, value = part.partition("=")
    return bool(sep and key.isidentifier() and value)


def _read_option(part: str) -> tuple[str, Any]:
    """`"beta=0.3"` -> `("beta", 0.3)`: int, float, bool or None when the value reads as one, else the string."""
    key, _, value = part.partition("=")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def random_selection(class_balanced: bool = False) -> Selection:
    """The random baseline (plain or class-balanced)."""
    return Selection(None, "random", class_balanced)
