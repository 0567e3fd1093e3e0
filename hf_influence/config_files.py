"""YAML ``--config`` files for `HfArgumentParser` command lines (the `hf-influence` CLI and the recipes).

A config file is a YAML mapping of option names to values. It sets the parser's defaults, so any flag given on the
command line still overrides it, and an option that the file provides is no longer required on the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take ``--config PATH`` (or ``--config=PATH``) out of ``argv``.

    Returns:
        `tuple`: the config path (or None) and the remaining arguments.

    Raises:
        ValueError: if ``--config`` is given without a path.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    args = list(argv)
    if args and args[-1] == "--config":
        raise ValueError("--config needs a YAML file path.")
    known, rest = pre.parse_known_args(args)
    return known.config, rest


def apply_yaml_defaults(parser: argparse.ArgumentParser, path: str | Path, *, hint: str = "",
                        ignore_unknown: bool = False) -> dict[str, Any]:
    """Set ``parser``'s defaults from the YAML mapping in ``path``.

    Args:
        parser (`argparse.ArgumentParser`): typically an `HfArgumentParser`.
        path (`str` or `Path`): the YAML file.
        hint (`str`, *optional*): appended to error messages (e.g. where the example profiles live).
        ignore_unknown (`bool`, defaults to False): skip options the parser does not have (a script that reads only
            part of a recipe's profile) instead of refusing them.

    Returns:
        `dict`: the values applied.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a mapping, or names options the parser does not have (the valid ones are listed).
    """
    import yaml

    path = Path(path)
    suffix = f" {hint}" if hint else ""
    if not path.is_file():
        raise FileNotFoundError(f"--config file {path} does not exist.{suffix}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"--config file {path} must hold a YAML mapping of option names to values, got {type(values).__name__}."
        )
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if ignore_unknown:
        values = {k: v for k, v in values.items() if k in known}
    elif unknown:
        valid = sorted(known - {"help", "config"})
        raise ValueError(f"Unknown option(s) {unknown} in {path}. Valid options: {valid}.{suffix}")
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)
    return values


class RecipeParser:
    """An `HfArgumentParser` over some dataclasses plus a ``--config`` YAML file of defaults (flags override it).

    The one parser helper of the recipes (as trl's ``TrlParser``): ``RecipeParser((A, B, C)).parse(argv)`` returns
    the dataclass instances in order.

    Args:
        dataclass_types (`Sequence[type]`): the argument dataclasses.
        hint (`str`, *optional*): added to config-file errors (e.g. where the example profiles live).
        ignore_unknown (`bool`, defaults to False): skip config-file options none of the dataclasses has (for a
            script that reads part of a recipe's profile).

    Example:
        ```python
        >>> model_args, training_args = RecipeParser((ModelArguments, TrainingArguments)).parse(
        ...     ["--config", "recipes/configs/smoke.yaml", "--output_dir", "out"])
        ```
    """

    def __init__(self, dataclass_types: Sequence[type], *, hint: str = "", ignore_unknown: bool = False) -> None:
        from transformers import HfArgumentParser

        self.dataclass_types = tuple(dataclass_types)
        self.hint, self.ignore_unknown = hint, ignore_unknown
        self.parser = HfArgumentParser(self.dataclass_types)
        self.parser.add_argument(
            "--config", type=str, default=None, help="YAML file of defaults for these flags (flags override it)."
        )

    def format_help(self) -> str:
        return self.parser.format_help()

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse ``argv`` (default: ``sys.argv[1:]``) with the defaults of its ``--config`` file."""
        import sys

        args = list(sys.argv[1:] if argv is None else argv)
        config_path, _ = split_config_flag(args)
        if config_path:
            apply_yaml_defaults(self.parser, config_path, hint=self.hint, ignore_unknown=self.ignore_unknown)
        outputs = self.parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
        return tuple(outputs[: len(self.dataclass_types)])
