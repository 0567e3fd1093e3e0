"""``hf-influence``: attach score columns, select a subset, and write or push a dataset card, from the shell.

Each subcommand's options are `HfArgumentParser` dataclasses (``--help`` lists them with their help texts), and
every subcommand accepts ``--config file.yaml`` whose keys are the option names; options given on the command line
override the file.

Copy-paste examples::

    hf-influence list
    hf-influence score --dataset train.jsonl --scorer el2n --model runs/bert/checkpoint-200 --output_dir scored
    hf-influence score --dataset scored --scorer dynamics --signals_dir runs/bert/signals --output_dir scored2
    hf-influence score --dataset scored2 --scorer gradient_similarity --output_dir scored3 \
        --scorer_kwargs '{"train_features": "feats/train", "query_features": "feats/target", "normalize": true}'
    hf-influence select --dataset scored --column el2n --keep 0.5 --strategy hardest --class_balanced \\
        --output_dir pruned
    hf-influence card --dataset pruned --license mit --push_to_hub me/snli-el2n-50

``--dataset`` is a folder written by ``save_scored_dataset``/``save_to_disk``, or a ``.json``/``.jsonl``/
``.parquet``/``.csv`` file. Outputs are folders written by `hf_influence.save_scored_dataset` (loadable with
``datasets.load_dataset`` and ``load_from_disk``); the provenance of earlier steps (``hf_influence.json``) is carried
forward so the final card lists every score column and the selection.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .config_files import apply_yaml_defaults, split_config_flag

logger = logging.get_logger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


# ---------------------------------------------------------------------------------------------------------------------
# Argument dataclasses
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Where the input data comes from."""

    dataset: str = field(
        metadata={
            "help": "A saved dataset folder (save_scored_dataset / save_to_disk) or a .json/.jsonl/.parquet/.csv"
        }
    )
    split: str = field(default="train", metadata={"help": "The split to use (and the split name of a data file)."})


@dataclass
class OutputArguments:
    """Where and how the result is saved (see `save_scored_dataset`)."""

    output_dir: str = field(metadata={"help": "Folder to write (dataset + README.md card + hf_influence.json)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace output_dir if it is not empty."})
    plots: bool = field(default=True, metadata={"help": "Draw and embed the data map and score histograms."})
    label_column: str = field(default="label", metadata={"help": "Class column (per-class plots and selection)."})
    base_model: str | None = field(default=None, metadata={"help": "Model the scores were computed with."})
    seeds: list[int] | None = field(default=None, metadata={"help": "Seeds of the runs behind the scores."})
    license: str | None = field(default=None, metadata={"help": "License id for the card's YAML header."})
    pretty_name: str | None = field(default=None, metadata={"help": "Title of the dataset card."})
    tags: list[str] | None = field(default=None, metadata={"help": "Extra card tags (hf_influence tags are added)."})
    task_categories: list[str] | None = field(default=None, metadata={"help": "Hub task categories of the data."})


@dataclass
class ScoreArguments:
    """Which scorer to run (see `hf-influence list`)."""

    scorer: str = field(metadata={"help": "Registered scorer name, e.g. el2n, loss, entropy, dynamics."})
    model: list[str] | None = field(
        default=None,
        metadata={"help": "Checkpoint path(s) or Hub id(s) for model-based scorers (several are averaged)."},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer path/id, to tokenize --text_columns on the fly."}
    )
    text_columns: list[str] | None = field(default=None, metadata={"help": "Text column(s) to tokenize."})
    signals_dir: str | None = field(
        default=None, metadata={"help": "SignalStore folder (output_dir/signals) for the dynamics scorer."}
    )
    column: str | None = field(default=None, metadata={"help": "Output column name (default: the scorer name)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per map batch / forward pass."})
    device: str | None = field(default=None, metadata={"help": "Device, e.g. cpu or cuda (default: cuda if any)."})
    scorer_kwargs: str | None = field(
        default=None, metadata={"help": 'More scorer arguments as a JSON object, e.g. \'{"task": "causal_lm"}\'.'}
    )


@dataclass
class SelectArguments:
    """How to select (see `hf_influence.select_by_score`)."""

    keep: float = field(metadata={"help": "Fraction in (0, 1] of the scored rows, or a count when > 1."})
    strategy: str = field(metadata={"help": "hardest, easiest, highest, lowest, random, window, ccs, coverage, "
                                            "weighted, dealrec or a registered strategy."})
    column: str | None = field(default=None, metadata={"help": "Score column (its polarity is read from the data)."})
    polarity: str | None = field(
        default=None,
        metadata={"help": "higher_is_harder or higher_is_easier, for a column that records none (hard/easy "
                          "strategies only)."},
    )
    class_balanced: bool = field(default=False, metadata={"help": "Keep each class's share."})
    seed: int = field(default=0, metadata={"help": "Seed of the random parts of the strategy."})
    nan_policy: str = field(default="drop", metadata={"help": "Rows with a NaN score: drop or raise."})
    strategy_kwargs: str | None = field(
        default=None, metadata={"help": 'Strategy arguments as a JSON object, e.g. \'{"k": 50, "beta": 0.1}\'.'}
    )


@dataclass
class CardArguments:
    """Rewrite and/or push the card of a scored dataset."""

    output_dir: str | None = field(default=None, metadata={"help": "Write the dataset with its new card here."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace output_dir if it is not empty."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Dataset repo id to push to, e.g. me/scored."})
    token: str | None = field(default=None, metadata={"help": "Hub write token (default: HF_TOKEN or saved login)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    signals_dir: str | None = field(default=None, metadata={"help": "SignalStore folder, for the data map."})
    plots: bool = field(default=True, metadata={"help": "Draw and embed the data map and score histograms."})
    label_column: str = field(default="label", metadata={"help": "Class column for per-class histograms."})
    base_model: str | None = field(default=None, metadata={"help": "Model the scores were computed with."})
    license: str | None = field(default=None, metadata={"help": "License id for the card's YAML header."})
    pretty_name: str | None = field(default=None, metadata={"help": "Title of the dataset card."})
    tags: list[str] | None = field(default=None, metadata={"help": "Extra card tags."})
    task_categories: list[str] | None = field(default=None, metadata={"help": "Hub task categories of the data."})


COMMANDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "score": ("Attach a score column with a registered scorer.", (DataArguments, ScoreArguments, OutputArguments)),
    "select": ("Keep a subset chosen from a score column.", (DataArguments, SelectArguments, OutputArguments)),
    "card": ("Write and/or push the dataset card of a scored dataset.", (DataArguments, CardArguments)),
    "list": ("List the registered scorers and selection strategies.", ()),
}


# ---------------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------------


class CLIError(ValueError):
    """A usage error reported as ``hf-influence <command>: error: ...`` with exit status 2."""


def parse_command_args(command: str, args: Sequence[str]) -> tuple[Any, ...]:
    """Parse the options of ``command`` into its dataclasses, with ``--config file.yaml`` defaults.

    Args:
        command (`str`): one of `COMMANDS`.
        args (`Sequence[str]`): the arguments after the command name.

    Returns:
        `tuple`: one instance per dataclass of the command.
    """
    from transformers import HfArgumentParser

    description, types = COMMANDS[command]
    parser = HfArgumentParser(types, prog=f"hf-influence {command}", description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file of option values (CLI overrides it).")
    try:
        config_path, args = split_config_flag(args)
        if config_path is not None:
            apply_yaml_defaults(parser, config_path)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from error
    return tuple(parser.parse_args_into_dataclasses(args=args))[: len(types)]  # drop the namespace of --config


def _json_kwargs(value: Any, option: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise CLIError(f"{option} must be a JSON object, e.g. '{{\"k\": 50}}'; cannot parse {value!r}: {err}") from err
    if not isinstance(parsed, dict):
        raise CLIError(f"{option} must be a JSON object (a mapping), got {type(parsed).__name__}.")
    return parsed


# ---------------------------------------------------------------------------------------------------------------------
# Data in and out
# ---------------------------------------------------------------------------------------------------------------------


def load_input(dataset: str, split: str) -> tuple[Any, dict[str, Any]]:
    """Load ``dataset`` (folder or data file) and the provenance saved next to it (empty dict if none).

    Returns:
        `tuple`: the `datasets.Dataset` of ``split`` and the ``hf_influence.json`` content.
    """
    import datasets

    from .hub import PROVENANCE_FILENAME

    path = Path(dataset)
    if not path.exists():
        raise CLIError(f"--dataset {dataset} does not exist. Pass a saved dataset folder or a data file.")
    provenance: dict[str, Any] = {}
    if path.is_dir():
        if (path / PROVENANCE_FILENAME).is_file():
            provenance = json.loads((path / PROVENANCE_FILENAME).read_text())
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    else:
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise CLIError(f"Unsupported data file {path.name}: use one of {sorted(DATA_FILE_BUILDERS)} or a folder.")
        loaded = datasets.load_dataset(builder, data_files={split: str(path)})
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise CLIError(f"Split {split!r} is not in {dataset}; available splits: {list(loaded)}.")
        loaded = loaded[split]
    return loaded, provenance


def _save(dataset: Any, out: OutputArguments, split: str, provenance: dict[str, Any], **kwargs: Any) -> Path:
    from .hub import save_scored_dataset

    return save_scored_dataset(
        dataset,
        out.output_dir,
        split=split,
        base_model=out.base_model or provenance.get("base_model"),
        seeds=out.seeds if out.seeds is not None else provenance.get("seeds") or (),
        plots=out.plots,
        label_column=out.label_column,
        license=out.license,
        tags=out.tags or (),
        task_categories=out.task_categories,
        pretty_name=out.pretty_name,
        overwrite=out.overwrite_output_dir,
        **kwargs,
    )


def _carried_scores(provenance: dict[str, Any], dataset: Any, new_columns: set[str]) -> list[dict[str, Any]]:
    """Score entries from earlier steps whose columns are still in the data (and are not being replaced)."""
    return [
        entry
        for entry in provenance.get("scores") or []
        if entry["column"] in dataset.column_names and entry["column"] not in new_columns
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------------


def run_score(data: DataArguments, score: ScoreArguments, out: OutputArguments) -> Path:
    """``hf-influence score``: attach one scorer's column(s) and save."""
    from .scorers import get_scorer_class

    dataset, provenance = load_input(data.dataset, data.split)
    kwargs = _json_kwargs(score.scorer_kwargs, "--scorer_kwargs")
    args: list[Any] = []
    if score.signals_dir is not None:
        from .store import SignalStore

        args.append(SignalStore.load(score.signals_dir))
    if score.model:
        kwargs["model"] = score.model[0] if len(score.model) == 1 else list(score.model)
    if score.tokenizer is not None:
        from transformers import AutoTokenizer

        kwargs["tokenizer"] = AutoTokenizer.from_pretrained(score.tokenizer)
    if score.text_columns:
        kwargs["text_columns"] = list(score.text_columns)
    for name in ("column", "device"):
        if getattr(score, name) is not None:
            kwargs[name] = getattr(score, name)
    kwargs["batch_size"] = score.batch_size
    kwargs.setdefault("label_column", out.label_column)
    scorer_class = get_scorer_class(score.scorer)  # an unknown name fails here, listing the valid ones
    try:
        scorer = scorer_class(*args, **kwargs)
    except TypeError as err:
        raise CLIError(
            f"The {score.scorer!r} scorer cannot be built from these options ({err}). Scorers that need Python "
            "objects (e.g. a collate function) are used from Python; see hf_influence.scorers."
        ) from err
    scored = scorer(dataset)
    from .cards import score_entries

    new_entries = score_entries([scorer])
    carried = _carried_scores(provenance, scored, {e["column"] for e in new_entries})
    checkpoints = [c for c in provenance.get("checkpoints") or []] + list(score.model or [])
    summary = args[0].summary() if args else None
    if summary is not None and not {"variability", "confidence", "correctness"} <= set(summary.columns):
        summary = None
    return _save(
        scored,
        out,
        data.split,
        provenance,
        scorers=carried + new_entries,
        checkpoints=checkpoints,
        selection=provenance.get("selection"),
        summary=summary,
        extra=provenance.get("extra"),
    )


def _recorded_polarity(dataset: Any, column: str | None, provenance: dict[str, Any]) -> str | None:
    """The column's polarity from the provenance file when the data itself carries none (e.g. a CSV file)."""
    from .polarity import get_polarity, polarities_from_provenance

    if column is None or column not in dataset.column_names or get_polarity(dataset, column) is not None:
        return None
    return polarities_from_provenance(provenance).get(column)


def run_select(data: DataArguments, select: SelectArguments, out: OutputArguments) -> Path:
    """``hf-influence select``: keep a subset with `select_by_score` and save it with the selection report."""
    from .selection import select_by_score

    dataset, provenance = load_input(data.dataset, data.split)
    keep: float | int = int(select.keep) if select.keep > 1 else select.keep
    if select.keep > 1 and select.keep != int(select.keep):
        raise CLIError(f"--keep {select.keep}: a count must be a whole number (or pass a fraction in (0, 1]).")
    kept, report = select_by_score(
        dataset,
        select.column,
        keep,
        select.strategy,
        class_balanced=select.class_balanced,
        label_column=out.label_column,
        seed=select.seed,
        return_report=True,
        nan_policy=select.nan_policy,
        polarity=select.polarity or _recorded_polarity(dataset, select.column, provenance),
        **_json_kwargs(select.strategy_kwargs, "--strategy_kwargs"),
    )
    logger.info(report.summary())
    return _save(
        kept,
        out,
        data.split,
        provenance,
        scorers=_carried_scores(provenance, kept, set()),
        checkpoints=provenance.get("checkpoints") or [],
        selection=report,
        extra=provenance.get("extra"),
    )


def run_card(data: DataArguments, card: CardArguments) -> Path | str:
    """``hf-influence card``: re-render the card of a scored dataset into ``output_dir`` and/or push it."""
    from .hub import push_scored_dataset, save_scored_dataset

    if card.output_dir is None and card.push_to_hub is None:
        raise CLIError("Nothing to do: pass --output_dir, --push_to_hub, or both.")
    dataset, provenance = load_input(data.dataset, data.split)
    summary = None
    if card.signals_dir is not None:
        from .store import SignalStore

        summary = SignalStore.load(card.signals_dir).summary()
    common = {
        "scorers": _carried_scores(provenance, dataset, set()),
        "selection": provenance.get("selection"),
        "base_model": card.base_model or provenance.get("base_model"),
        "checkpoints": provenance.get("checkpoints") or [],
        "seeds": provenance.get("seeds") or (),
        "summary": summary,
        "extra": provenance.get("extra"),
        "plots": card.plots,
        "split": data.split,
        "label_column": card.label_column,
        "license": card.license,
        "tags": card.tags or (),
        "task_categories": card.task_categories,
        "pretty_name": card.pretty_name,
    }
    result: Path | str = ""
    if card.output_dir is not None:
        result = save_scored_dataset(dataset, card.output_dir, overwrite=card.overwrite_output_dir, **common)
    if card.push_to_hub is not None:
        info = push_scored_dataset(dataset, card.push_to_hub, token=card.token, private=card.private, **common)
        result = getattr(info, "commit_url", None) or str(info)
    return result


def run_list() -> str:
    """``hf-influence list``: the registered scorers (with polarity and definition) and the selection strategies."""
    from .scorers import get_scorer_class, list_scorers
    from .selection import list_strategies

    lines = ["Scorers (name, polarity: definition):"]
    for name in list_scorers():
        klass = get_scorer_class(name)
        lines.append(f"  {name:<12} {klass.polarity or 'none':<17} {klass.definition}")
    lines.append("Selection strategies (higher score = harder):")
    lines.append("  " + ", ".join(list_strategies()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-influence`` console script.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (default: ``sys.argv[1:]``).

    Returns:
        `int`: the exit status (0 on success, 2 on a usage or input error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: hf-influence {" + ",".join(COMMANDS) + "} [options]  (hf-influence <command> --help)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        for name, (description, _) in COMMANDS.items():
            print(f"  {name:<7} {description}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"{usage}\nhf-influence: error: unknown command {command!r}; valid: {', '.join(COMMANDS)}.",
            file=sys.stderr,
        )
        return 2
    try:
        if command == "list":
            print(run_list())
            return 0
        parsed = parse_command_args(command, rest)
        runner = {"score": run_score, "select": run_select, "card": run_card}[command]
        result = runner(*parsed)
    except (CLIError, ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"hf-influence {command}: error: {err}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
