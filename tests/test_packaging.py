"""The INSTALLED package (not the source tree) ships its card templates and metrics module.

`python -m pytest` puts the repository on sys.path, so the other tests import the source tree; this one runs a fresh
interpreter outside the repository, where only the installed distribution (wheel or editable) is importable.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib.resources
templates = importlib.resources.files("hf_influence.model_cards")
names = sorted(p.name for p in templates.iterdir() if p.name.endswith(".jinja"))
assert names == ["dataset_card.md.jinja", "model_card.md.jinja"], names
for name in names:
    assert "{{" in templates.joinpath(name).read_text(encoding="utf-8")
metrics = importlib.resources.files("hf_influence.rec.metrics")
assert metrics.joinpath("recall_ndcg.py").is_file()
"""


def test_installed_distribution_ships_templates_and_metric(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_setup_cfg_lists_every_source_package():
    """`setup.cfg` names its packages one by one: a new sub-package missing there installs without it (a recipe run
    from a wheel install then fails with ModuleNotFoundError while the source-tree tests pass)."""
    import configparser
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(repo / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    in_tree = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "hf_influence").rglob("__init__.py")}
    assert in_tree <= listed, f"add {sorted(in_tree - listed)} to [options] packages in setup.cfg"
