"""The scorer registry: scorers by name, for `get_scorer("el2n", ...)`, the CLI and the pruning experiments.

A scorer class registers itself with the `@register_scorer` decorator when its module is imported. The built-in
scorer modules are imported by `hf_influence.scorers` (plain imports in its `__init__`), so importing the package
fills the registry; a user's scorer is registered when the user's module defines it.
"""

from __future__ import annotations

from typing import Any

from ..polarity import POLARITIES
from .base import Scorer

_SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer] | None = None, /, *, name: str | None = None, overwrite: bool = False) -> Any:
    """Register a `Scorer` subclass under `name` (defaults to `cls.name`). Usable as a decorator.

    Args:
        cls (`type[Scorer]`, *optional*): the class (when used as `@register_scorer`).
        name (`str`, *optional*, keyword-only): registry name; defaults to `cls.name`.
        overwrite (`bool`, keyword-only): replace an existing registration of the same name.

    Returns:
        The class (decorator use) or a decorator.

    Example:
        ```python
        >>> @register_scorer(name="my_length")
        ... class MyLength(Scorer):
        ...     name, polarity, definition, paper = "my_length", "higher_is_harder", "len(input_ids)", "-"
        ...     def score_batch(self, batch):
        ...         return [len(x) for x in batch["input_ids"]]
        >>> "my_length" in list_scorers()
        True
        ```
    """

    def decorator(klass: type[Scorer]) -> type[Scorer]:
        if not (isinstance(klass, type) and issubclass(klass, Scorer)):
            raise TypeError(f"register_scorer expects a subclass of Scorer, got {klass!r}.")
        key = name or klass.name
        if not key:
            raise ValueError(f"{klass.__name__} has no `name`; set the class attribute or pass name=... .")
        if klass.polarity is not None and klass.polarity not in POLARITIES:
            raise ValueError(
                f"{klass.__name__}.polarity is {klass.polarity!r}; it must be one of {', '.join(POLARITIES)}, or None "
                "for a score with no hard/easy reading."
            )
        existing = _SCORERS.get(key)
        if existing is not None and existing is not klass and not overwrite:
            raise ValueError(
                f"A scorer named {key!r} is already registered ({existing.__module__}.{existing.__name__}). "
                "Choose another name or pass overwrite=True."
            )
        _SCORERS[key] = klass
        return klass

    if cls is not None:
        return decorator(cls)
    return decorator


def list_scorers() -> list[str]:
    """Names of all registered scorers (the built-in ones and any registered by user code), sorted."""
    return sorted(_SCORERS)


def get_scorer_class(name: str) -> type[Scorer]:
    """The registered `Scorer` subclass called `name`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in _SCORERS:
        raise ValueError(f"Unknown scorer {name!r}. Valid scorers: {', '.join(sorted(_SCORERS)) or '(none)'}.")
    return _SCORERS[name]


def get_scorer(name: str, **config: Any) -> Scorer:
    """Instantiate the registered scorer `name` with keyword `config`.

    Example:
        ```python
        >>> scorer = get_scorer("el2n", model=model, batch_size=16)  # doctest: +SKIP
        ```
    """
    return get_scorer_class(name)(**config)
