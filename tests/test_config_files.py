"""YAML --config defaults shared by the CLI and the recipes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from transformers import HfArgumentParser

from hf_influence.config_files import apply_yaml_defaults, split_config_flag


@dataclass
class Options:
    name: str = field(metadata={"help": "required"})
    size: int = field(default=1, metadata={"help": "a number"})


def _parse(argv):
    parser = HfArgumentParser(Options)
    parser.add_argument("--config", default=None)
    path, rest = split_config_flag(argv)
    if path:
        apply_yaml_defaults(parser, path)
    return parser.parse_args_into_dataclasses(args=rest)[0]


def test_file_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "from-file", "size": 5}))
    assert _parse(["--config", str(config)]) == Options("from-file", 5)  # the file satisfies the required option
    assert _parse([f"--config={config}", "--size", "7"]) == Options("from-file", 7)
    assert _parse(["--name", "flag"]) == Options("flag", 1)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _parse(["--config", str(tmp_path / "missing.yaml")])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a YAML mapping.*got list"):
        _parse(["--config", str(listed)])
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"nmae": "x"}))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['nmae'\].*Valid options: \['name', 'size'\]"):
        _parse(["--config", str(typo)])
    with pytest.raises(ValueError, match="--config needs a YAML file path"):
        split_config_flag(["--size", "2", "--config"])
