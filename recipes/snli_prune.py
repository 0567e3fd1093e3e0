#!/usr/bin/env python
"""Score SNLI training pairs, prune them, re-fine-tune on what is kept, and compare with random and full data.

This reproduces the protocol of Anand, Tan & Minakova, "Influence Scores at Scale for Efficient Language Data
Sampling" (EMNLP 2023): fine-tune an encoder for a scoring budget while recording per-example training signals, attach
score columns (EL2N, GraNd, forgetting, AUM, cartography confidence/variability, VoG, loss, TracIn), keep a fraction of
the training set by each score, fine-tune a FRESH model on what is kept, and report validation and test accuracy next
to random selection at the same budget and to the full data.

Copy-paste commands (run from the repository root):

    # offline, 2 CPU cores, about an hour (packaged all-MiniLM-L6-v2, the shared SNLI copy)
    python recipes/snli_prune.py --config recipes/configs/snli_offline_cpu.yaml --output_dir runs/snli_offline

    # the same with two processes (CPU DDP through accelerate)
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/snli_prune.py \
        --config recipes/configs/snli_offline_cpu.yaml --output_dir runs/snli_offline

    # CI-sized smoke run (a few dozen pairs, minutes)
    python recipes/snli_prune.py --config recipes/configs/snli_smoke.yaml --output_dir runs/snli_smoke

    # the paper's setup: BERT-small, full SNLI from the Hub, 10 epochs, batch 128, 3 runs (needs a GPU and network)
    accelerate launch recipes/snli_prune.py --config recipes/configs/snli_paper.yaml --output_dir runs/snli_paper

    # any flag overrides the YAML file; every flag is listed by --help
    python recipes/snli_prune.py --config recipes/configs/snli_smoke.yaml --scores el2n forgetting \
        --keep_fractions 0.5 0.7 --finetune_seeds 0 1 2 --output_dir runs/snli_custom

Outputs in ``--output_dir``: ``results.json`` and ``results.csv`` (one row per score/strategy/fraction/seed),
``accuracy_vs_fraction.png``, ``scored_dataset/`` (the scored training split with its dataset card; pushed with
``--push_to_hub --hub_repo_id user/name``), ``best_pruned_model/`` (the best pruned model by validation accuracy with
its model card), ``timing.json`` (seconds per phase) and a summary table printed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser, TrainerCallback
from transformers.utils import logging

from hf_influence.config_files import apply_yaml_defaults, split_config_flag

logger = logging.get_logger("snli_prune")

LABEL_NAMES = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PACKAGED_MODELS = ("packaged:minilm",)
EXAMPLE_ID = "example_id"  # hf_influence.data.EXAMPLE_ID_COLUMN
PAPER_RESULTS = {
    # Anand, Tan & Minakova (EMNLP 2023), BERT_SMALL on SNLI, test accuracy (%), mean +- std over 3 runs (S3 §2.3-2.4)
    "full data": "85.52 +- 0.14",
    "vog_class, 45% pruned (easy)": "85.04 +- 0.20",
    "vog_dataset, 45% pruned (easy)": "84.60 +- 1.50",
    "forgetting, 45% pruned (least forgotten)": "84.58 +- 0.02",
}


# ---------------------------------------------------------------------------------------------------------------------
# The scores this recipe can compute, how, and how each is pruned by default (METHODS.md B.1-B.2)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSpec:
    """How the recipe obtains one score column and prunes with it.

    Attributes:
        name: the recipe's score name (also the dataset column).
        source: `"store"` (a SignalStore summary statistic of the scoring runs, averaged over seeds),
            `"checkpoint"` (a registered Scorer evaluated at the early checkpoint of every scoring seed, averaged),
            `"trajectory"` (a registered Scorer over the N_c checkpoints of the first scoring seed), `"null"` (PVI:
            the final checkpoints of the scoring runs against a run fine-tuned on empty inputs).
        default_strategy: the `select_by_score` strategy used unless `--selections` says otherwise.
        polarity: `"higher_is_harder"` or `"higher_is_easier"`.
    """

    name: str
    source: str
    default_strategy: str
    polarity: str
    description: str

    @property
    def hardness_column(self) -> str:
        """The `select_by_score` column that is higher for harder examples (negated with `-` when higher = easier)."""
        return self.name if self.polarity == "higher_is_harder" else f"-{self.name}"


SCORES: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec("el2n", "checkpoint", "hardest", "higher_is_harder",
                  "||softmax(f(x)) - onehot(y)||_2 in eval mode at the end of epoch --el2n_epoch, mean over seeds"),
        ScoreSpec("grand", "checkpoint", "hardest", "higher_is_harder",
                  "per-example loss-gradient L2 norm at the same early checkpoint, mean over seeds"),
        ScoreSpec("loss", "checkpoint", "hardest", "higher_is_harder",
                  "cross-entropy of the gold label at the end of the scoring run, mean over seeds"),
        ScoreSpec("forgetting", "store", "weighted", "higher_is_harder",
                  "forgetting events (Toneva et al. 2019); dense evaluation every --dense_eval_steps steps"),
        ScoreSpec("aum", "store", "hardest", "higher_is_easier",
                  "area under the margin (Pleiss et al. 2020) over training updates"),
        ScoreSpec("confidence", "store", "hardest", "higher_is_easier",
                  "dataset-cartography confidence: mean gold probability over epochs"),
        ScoreSpec("variability", "store", "hardest", "higher_is_harder",
                  "dataset-cartography variability: std of the gold probability over epochs"),
        ScoreSpec("vog_class", "trajectory", "hardest", "higher_is_harder",
                  "VoG over N_c checkpoints of one run, z-scored within the gold class"),
        ScoreSpec("vog_dataset", "trajectory", "weighted", "higher_is_harder",
                  "VoG over N_c checkpoints of one run, z-scored over the whole dataset"),
        ScoreSpec("tracin", "trajectory", "hardest", "higher_is_harder",
                  "TracIn self-influence summed over the N_c checkpoints of one run"),
        ScoreSpec("grad_cosine", "trajectory", "easiest", "higher_is_easier",
                  "mean (--similarity_reduce) gradient cosine with --target_samples held-out validation pairs, "
                  "summed over the N_c checkpoints of one run (LESS-style targeted selection); keep the most similar"),
        ScoreSpec("pvi", "null", "hardest", "higher_is_easier",
                  "pointwise V-information (bits): log2 p(y|x) at the end of epoch --pvi_epoch of every scoring run "
                  "(mean over seeds) minus log2 p(y|empty pair) of a model fine-tuned --pvi_epoch epochs on empty "
                  "inputs"),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which encoder to fine-tune."""

    model_name_or_path: str = field(
        default="google/bert_uncased_L-4_H-512_A-8",
        metadata={
            "help": "Hub id or local folder of an encoder with a sequence-classification head in transformers "
            "(AutoModelForSequenceClassification). 'packaged:minilm' is the packaged all-MiniLM-L6-v2 (offline)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to use if not the model's own (same special values accepted)."}
    )
    num_labels: int = field(default=3, metadata={"help": "Number of classes (SNLI: 3)."})
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the classification head (parameters outside the base encoder); the encoder uses "
            "--learning_rate. The paper used 1e-3 for the head and 1e-4 for BERT-small. Default: one learning rate."
        },
    )

    head_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Replace the model's classification head with an MLP of --head_layers linear layers this wide "
            "between them (hf_influence.mlp_head; the paper: 64 for BERT-small, 256 for BERT-base). Default: the "
            "model's own head (a linear layer; BERT: on the tanh pooler)."
        },
    )
    head_layers: int = field(default=3, metadata={"help": "Linear layers of the MLP head (the paper: 3)."})
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout before each layer of the MLP head."})
    head_pooling: str = field(
        default="cls",
        metadata={"help": "What the MLP head reads: 'cls' (first token), 'pooler' (the encoder's pooler output) or "
                  "'mean' (mean over the attention mask). The paper does not say."},
    )

    def __post_init__(self) -> None:
        if self.num_labels < 2:
            raise ValueError(f"--num_labels must be at least 2, got {self.num_labels}.")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ValueError(f"--head_learning_rate must be positive, got {self.head_learning_rate}.")
        if self.head_hidden_size is not None:
            from hf_influence.mlp_head import MLPHeadConfig

            MLPHeadConfig(head_hidden_size=self.head_hidden_size, head_layers=self.head_layers,
                          head_dropout=self.head_dropout, pooling=self.head_pooling)  # validates, names the fix

    def mlp_head_kwargs(self) -> dict[str, Any]:
        """The `MLPHeadConfig` arguments of --head_hidden_size and friends."""
        return {"head_hidden_size": self.head_hidden_size, "head_layers": self.head_layers,
                "head_dropout": self.head_dropout, "pooling": self.head_pooling}


@dataclass
class DataArguments:
    """Where the premise/hypothesis/label pairs come from and how much of them to use."""

    dataset_name: str = field(
        default="stanfordnlp/snli",
        metadata={
            "help": "Hub dataset id, or a local folder holding train/validation[/test] files (.jsonl, .json or "
            ".parquet). 'shared:snli' is the project's offline copy (hf_influence.paths.shared_data_dir('snli'))."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    premise_column: str = field(default="premise", metadata={"help": "Column holding the premise text."})
    hypothesis_column: str = field(default="hypothesis", metadata={"help": "Column holding the hypothesis text."})
    label_column: str = field(default="label", metadata={"help": "Integer class column (-1 = unlabelled)."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate tokenised pairs to this many tokens."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many labelled training pairs (CPU-sized runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of this many validation pairs and as many test pairs."}
    )
    subset_seed: int = field(default=0, metadata={"help": "Seed of the --max_*_samples subsets."})
    label_noise: float = field(
        default=0.0,
        metadata={
            "help": "Corrupt this fraction of the training labels (after subsetting) to see how each selection treats "
            "mislabeled pairs (Anand et al.'s noise experiment: 5-30%% nominal). results.csv then gives each kept "
            "set's share of corrupted pairs (noisy_kept); the scored dataset keeps original_label and is_noisy."
        },
    )
    label_noise_mode: str = field(
        default="random",
        metadata={"help": "'random' (the paper: a uniformly drawn label, possibly the original one) or 'permute' "
                          "(Data Diet's code: the chosen labels shuffled among themselves)."},
    )
    label_noise_seed: int = field(default=0, metadata={"help": "Seed of the label corruption."})

    def __post_init__(self) -> None:
        from hf_influence.noise import NOISE_MODES

        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}.")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"--label_noise is the fraction of training labels to corrupt, in [0, 1); got "
                             f"{self.label_noise}.")
        if self.label_noise_mode not in NOISE_MODES:
            raise ValueError(f"--label_noise_mode must be one of {', '.join(NOISE_MODES)}, got "
                             f"{self.label_noise_mode!r}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer (or omitted for all), got {value}.")


@dataclass
class PruningArguments:
    """What to score, how to prune, and how often to repeat."""

    scores: list[str] = field(
        default_factory=lambda: ["el2n", "forgetting", "vog_class", "vog_dataset"],
        metadata={"help": f"Scores to compute and prune with. Valid: {', '.join(SCORES)}."},
    )
    selections: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Optional 'score:strategy' pairs to evaluate (e.g. el2n:easiest vog_class:hardest); default: each "
            "score with its default strategy (keep the hardest = prune easy; weighted sampling for forgetting and "
            "vog_dataset, METHODS.md B.2)."
        },
    )
    keep_fractions: list[float] = field(
        default_factory=lambda: [0.55, 0.75],
        metadata={"help": "Fractions of the training set to KEEP, each in (0, 1]; 0.55 = 45%% pruned."},
    )
    scoring_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "Seeds of the scoring runs (scores are averaged over them)."}
    )
    finetune_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "Seeds of the re-fine-tuning runs (mean and std per point)."}
    )
    scoring_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of the scoring runs (default: --num_train_epochs)."}
    )
    el2n_epoch: int = field(
        default=2, metadata={"help": "EL2N/GraNd are computed at the end of this epoch (1-based; the paper used 2)."}
    )
    grand_at_initialization: bool = field(
        default=False,
        metadata={"help": "GraNd at initialisation (Data Diet's GraNd at step 0: the pretrained encoder with each "
                          "scoring seed's fresh head, averaged) instead of at the end of epoch --el2n_epoch."},
    )
    pvi_epoch: int = field(
        default=2,
        metadata={"help": "PVI: the real-input model is taken at the end of this epoch of every scoring run and the "
                          "null model is trained for this many epochs (the paper: 2)."},
    )
    num_score_checkpoints: int = field(
        default=10, metadata={"help": "N_c: evenly spaced checkpoints of the first scoring run used by VoG/TracIn."}
    )
    vog_reduce: str = field(
        default="var",
        metadata={"help": "VoG aggregation over checkpoints: 'var' (Anand et al. Alg. 1) or 'std' (original VoG)."},
    )
    weighted_mapping: str = field(
        default="softmax",
        metadata={
            "help": "Sampling probabilities of the 'weighted' strategy: 'softmax' of the score (Anand et al. B.2, the "
            "SNLI experiments) or 'linear' map to [eps, 1] (their App. C.3 production sampling)."
        },
    )
    weighted_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of 'weighted'."})
    class_balanced: bool = field(
        default=False, metadata={"help": "Apply every selection within each class (keeps the class shares)."}
    )
    tracin_params: str | None = field(
        default="last_layer",
        metadata={
            "help": "Parameters whose gradients TracIn uses: 'last_layer' (the last encoder layer, as Anand et al.; "
            "not the library's params='last_layer', which is the output layer), a parameter-name regex, or 'all'."
        },
    )
    tracin_checkpoint_every: int | None = field(
        default=None,
        metadata={
            "help": "TracIn's own checkpoints: every N optimizer steps of the first scoring run (N, 2N, ..., "
            "--num_score_checkpoints x N; the paper: 10 checkpoints every 500 iterations). Default: the evenly "
            "spaced checkpoints VoG uses."
        },
    )
    target_samples: int = field(
        default=64,
        metadata={"help": "grad_cosine: the first N validation pairs are the target set whose gradients the training "
                          "pairs are compared with; they are then left out of the validation accuracy."},
    )
    similarity_reduce: str = field(
        default="mean", metadata={"help": "grad_cosine over the target pairs: 'mean' or 'max' (best-matching pair)."}
    )
    similarity_projection: int = field(
        default=16, metadata={"help": "grad_cosine: k_in = k_out of the per-layer gradient projections."}
    )
    scoring_batch_size: int = field(default=64, metadata={"help": "Batch size of the checkpoint-based scorers."})
    include_random: bool = field(default=True, metadata={"help": "Evaluate random selection at every fraction."})
    include_full: bool = field(default=True, metadata={"help": "Evaluate the full training set as reference."})
    hub_repo_id: str | None = field(
        default=None, metadata={"help": "Dataset repo for the scored training split (with --push_to_hub)."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the dataset repo as private."})

    def __post_init__(self) -> None:
        for name in ("scores", "selections", "keep_fractions", "scoring_seeds", "finetune_seeds"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, [])
            elif isinstance(value, (str, int, float)):
                setattr(self, name, [value])
        self.keep_fractions = [float(f) for f in self.keep_fractions]
        self.scoring_seeds = [int(s) for s in self.scoring_seeds]
        self.finetune_seeds = [int(s) for s in self.finetune_seeds]
        unknown = [s for s in self.scores if s not in SCORES]
        if unknown:
            raise ValueError(f"Unknown score(s) {unknown}; valid scores are: {', '.join(SCORES)}.")
        bad = [f for f in self.keep_fractions if not (0.0 < f <= 1.0) or math.isnan(f)]
        if bad:
            raise ValueError(
                f"--keep_fractions must lie in (0, 1] (the fraction of training pairs KEPT), got {bad}. "
                "For 45% pruned pass 0.55."
            )
        if not self.keep_fractions and (self.scores or self.selections):
            raise ValueError("Pass at least one --keep_fractions value, e.g. --keep_fractions 0.55 0.75.")
        if not self.finetune_seeds:
            raise ValueError("Pass at least one --finetune_seeds value, e.g. --finetune_seeds 0 1 2.")
        if self.scores and not self.scoring_seeds:
            raise ValueError("Scores need at least one --scoring_seeds value, e.g. --scoring_seeds 0.")
        if self.el2n_epoch < 1:
            raise ValueError(f"--el2n_epoch is 1-based and must be at least 1, got {self.el2n_epoch}.")
        if self.pvi_epoch < 1:
            raise ValueError(f"--pvi_epoch is 1-based and must be at least 1, got {self.pvi_epoch}.")
        if self.num_score_checkpoints < 2:
            raise ValueError(
                f"--num_score_checkpoints must be at least 2 (VoG is a variance), got {self.num_score_checkpoints}."
            )
        if self.vog_reduce not in ("var", "std"):
            raise ValueError(f"--vog_reduce must be 'var' or 'std', got {self.vog_reduce!r}.")
        from hf_influence.grads.similarity import SIMILARITY_REDUCTIONS

        if self.similarity_reduce not in SIMILARITY_REDUCTIONS:
            raise ValueError(f"--similarity_reduce must be one of {', '.join(SIMILARITY_REDUCTIONS)}, got "
                             f"{self.similarity_reduce!r}.")
        if self.target_samples < 1 or self.similarity_projection < 1:
            raise ValueError(f"--target_samples and --similarity_projection must be positive, got "
                             f"{self.target_samples} and {self.similarity_projection}.")
        if self.scoring_batch_size < 1:
            raise ValueError(f"--scoring_batch_size must be positive, got {self.scoring_batch_size}.")
        if self.tracin_checkpoint_every is not None and self.tracin_checkpoint_every < 1:
            raise ValueError(f"--tracin_checkpoint_every must be a positive number of steps, got "
                             f"{self.tracin_checkpoint_every}.")
        if self.weighted_mapping not in ("softmax", "linear"):
            raise ValueError(f"--weighted_mapping must be 'softmax' or 'linear', got {self.weighted_mapping!r}.")
        if not self.weighted_temperature > 0:
            raise ValueError(f"--weighted_temperature must be positive, got {self.weighted_temperature}.")
        from hf_influence.selection import list_strategies

        for item in self.selections:
            score, _, strategy = item.partition(":")
            if score not in SCORES or not strategy:
                raise ValueError(
                    f"Bad --selections entry {item!r}: expected 'score:strategy' with score one of "
                    f"{', '.join(SCORES)}."
                )
            if strategy not in list_strategies():
                raise ValueError(
                    f"Unknown strategy {strategy!r} in --selections {item!r}; valid: {', '.join(list_strategies())}."
                )
            if score not in self.scores:
                raise ValueError(f"--selections entry {item!r} uses {score!r}, which is not in --scores {self.scores}")

    def tracin_steps(self) -> list[int]:
        """The steps of TracIn's own checkpoints (empty: TracIn uses the evenly spaced trajectory)."""
        every = self.tracin_checkpoint_every
        return [every * (i + 1) for i in range(self.num_score_checkpoints)] if every else []

    def strategy_kwargs(self, strategy: str) -> dict[str, Any]:
        """Extra `select_by_score` keyword arguments of a strategy."""
        if strategy == "weighted":
            return {"mapping": self.weighted_mapping, "temperature": self.weighted_temperature}
        return {}

    def selection_grid(self) -> list[tuple[str, str]]:
        """The (score, strategy) pairs to evaluate, in order."""
        if self.selections:
            return [tuple(item.split(":", 1)) for item in self.selections]  # type: ignore[misc]
        return [(score, SCORES[score].default_strategy) for score in self.scores]


def _training_arguments_class() -> type:
    from hf_influence.config import ScoringConfig

    return ScoringConfig


def build_parser():
    """The HfArgumentParser over (ModelArguments, DataArguments, PruningArguments, ScoringConfig), plus --config."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PruningArguments, _training_arguments_class()))
    parser.add_argument(
        "--config", type=str, default=None, help="YAML file of defaults for any of these flags (flags override it)."
    )
    return parser


def parse_args(argv: Sequence[str] | None = None):
    """Parse the command line, with defaults read from a YAML ``--config`` file.

    Returns:
        `tuple`: (ModelArguments, DataArguments, PruningArguments, ScoringConfig).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, _ = split_config_flag(argv)
    if config_path:
        apply_yaml_defaults(parser, config_path, hint="See recipes/configs/ for the profiles.")
    outputs = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return tuple(outputs[:4])


def resolve_special(value: str | None, kind: str) -> str | None:
    """Resolve the special values ``packaged:minilm`` (model) and ``shared:<name>`` (data folder)."""
    if value is None:
        return None
    if kind == "model" and value.startswith("packaged:"):
        if value != "packaged:minilm":
            raise ValueError(f"Unknown packaged model {value!r}; available: {', '.join(PACKAGED_MODELS)}.")
        from hf_influence.paths import packaged_minilm_path

        return str(packaged_minilm_path())
    if kind == "data" and value.startswith("shared:"):
        from hf_influence.paths import shared_data_dir

        return str(shared_data_dir(value.split(":", 1)[1]))
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Phase timing
# ---------------------------------------------------------------------------------------------------------------------


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase (and per run), written to ``timing.json``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.runs: list[dict[str, Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - begin

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_seconds": time.perf_counter() - self.start,
            "phases": dict(self.phases),
            "runs": list(self.runs),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def find_local_data_files(folder: Path) -> tuple[str, dict[str, list[str]]]:
    """Find ``train``/``validation``/``test`` files (JSON lines, JSON or Parquet) in ``folder`` or ``folder/data``.

    A file belongs to a split when its name starts with the split name (or ``dev``/``valid`` for validation) followed
    by ``.`` or ``-`` (so ``train.jsonl`` and ``train-00000-of-00001.parquet`` both count).

    Returns:
        `tuple`: the `datasets` builder name (`"json"` or `"parquet"`) and `{split: [files]}`.

    Raises:
        FileNotFoundError: if there is no training or no validation file, listing what was found.
        ValueError: if the folder mixes JSON and Parquet files.
    """
    candidates = [p for d in (folder, folder / "data") if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    files: dict[str, list[str]] = {}
    builders = set()
    for split in SPLITS:
        for path in candidates:
            name = path.name.lower()
            if path.suffix.lower() not in DATA_BUILDERS:
                continue
            if any(name.startswith(alias + ".") or name.startswith(alias + "-") for alias in SPLIT_ALIASES[split]):
                files.setdefault(split, []).append(str(path))
                builders.add(DATA_BUILDERS[path.suffix.lower()])
    missing = [s for s in ("train", "validation") if s not in files]
    if missing:
        found = ", ".join(p.name for p in candidates) or "no files"
        raise FileNotFoundError(
            f"Dataset folder {folder} has no {' or '.join(missing)} file (found: {found}). Expected train.jsonl, "
            "validation.jsonl (or dev.jsonl) and optionally test.jsonl (.json or .parquet also work)."
        )
    if len(builders) > 1:
        raise ValueError(f"Dataset folder {folder} mixes JSON and Parquet files; keep one format per folder.")
    return builders.pop(), files


def load_raw_splits(data_args: DataArguments):
    """Load the train/validation(/test) splits from a local folder or the Hub, with a clear offline error."""
    from datasets import DatasetDict, load_dataset

    name = resolve_special(data_args.dataset_name, "data")
    path = Path(name).expanduser()
    if path.is_dir():
        builder, files = find_local_data_files(path)
        raw = load_dataset(builder, data_files=files)
    elif path.suffix or name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise FileNotFoundError(
            f"--dataset_name {name!r} looks like a local path but is not a folder. Pass a folder with train/"
            "validation/test .jsonl or .parquet files (e.g. ../shared/data/snli or shared:snli), or a Hub id."
        )
    else:
        try:
            raw = load_dataset(name, data_args.dataset_config_name)
        except Exception as err:  # noqa: BLE001 - any failure to reach/read the Hub gets the same advice
            raise RuntimeError(
                f"Could not load the Hub dataset {name!r} ({type(err).__name__}: {err}). Without network access (or "
                "with HF_HUB_OFFLINE=1) pass a local folder of train/validation/test JSON lines or Parquet files "
                "instead, e.g. --dataset_name ../shared/data/snli (or --dataset_name shared:snli)."
            ) from err
    if not isinstance(raw, DatasetDict):
        raise ValueError(f"Expected a dataset with splits, got {type(raw).__name__}.")
    for split in ("train", "validation"):
        if split not in raw:
            raise ValueError(f"Dataset {name!r} has no {split!r} split (splits: {list(raw)}).")
    return raw


def validate_columns(raw, data_args: DataArguments) -> None:
    """Check every split has the premise, hypothesis and label columns; the error names the flags to pass."""
    needed = {
        "--premise_column": data_args.premise_column,
        "--hypothesis_column": data_args.hypothesis_column,
        "--label_column": data_args.label_column,
    }
    for split, ds in raw.items():
        missing = {flag: col for flag, col in needed.items() if col not in ds.column_names}
        if missing:
            hint = ", ".join(f"{flag} <column>" for flag in missing)
            raise ValueError(
                f"The {split!r} split has no column(s) {sorted(missing.values())} (its columns: {ds.column_names}). "
                f"The recipe needs a premise, a hypothesis and an integer label per pair; pass {hint} to name them."
            )


def subset(dataset, n: int | None, seed: int):
    """A random subset of ``n`` rows kept in their original order (the whole dataset when ``n`` is None/too big)."""
    if n is None or n >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    return dataset.select(np.sort(rng.choice(len(dataset), size=n, replace=False)))


def prepare_splits(raw, data_args: DataArguments, num_labels: int):
    """Add example ids (before any filtering/subsetting), drop unlabelled pairs, validate labels, subset.

    Returns:
        `dict[str, Dataset]`: "train", "validation" and (when present) "test", each with an ``example_id`` column
        naming its row in the ORIGINAL split.
    """
    from hf_influence.data import EXAMPLE_ID_COLUMN, add_example_ids, validate_class_labels

    label = data_args.label_column
    splits = {}
    for split in SPLITS:
        if split not in raw:
            continue
        ds = add_example_ids(raw[split], EXAMPLE_ID_COLUMN, overwrite=False)
        ds = ds.filter(lambda labels: [y is not None and y != -1 for y in labels], input_columns=label, batched=True)
        if len(ds) == 0:
            raise ValueError(f"The {split!r} split has no labelled pairs (all labels are -1 or missing).")
        validate_class_labels(np.asarray(ds[label]), num_labels, label)
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        splits[split] = subset(ds, limit, data_args.subset_seed)
    if data_args.label_noise > 0:
        from hf_influence.noise import inject_label_noise

        splits["train"] = inject_label_noise(splits["train"], data_args.label_noise, data_args.label_noise_mode,
                                             seed=data_args.label_noise_seed, label_column=label,
                                             num_labels=num_labels)
    return splits


def tokenize_splits(splits: dict, tokenizer, data_args: DataArguments, main_process_first) -> dict:
    """Tokenise premise/hypothesis pairs (no padding: the collator pads each batch); text columns are kept."""

    def encode(batch):
        return tokenizer(
            batch[data_args.premise_column],
            batch[data_args.hypothesis_column],
            truncation=True,
            max_length=data_args.max_seq_length,
        )

    out = {}
    with main_process_first(desc="tokenising"):
        for split, ds in splits.items():
            out[split] = ds.map(encode, batched=True, desc=f"Tokenising {split}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def load_model_config(model_args: ModelArguments):
    """Load the model's config (cheap) and check that it has a sequence-classification head in transformers."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = resolve_special(model_args.model_name_or_path, "model")
    try:
        config = AutoConfig.from_pretrained(name, num_labels=model_args.num_labels)
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"Could not load the model config of {model_args.model_name_or_path!r} ({type(err).__name__}: {err}). "
            "Pass a local folder saved with save_pretrained, a cached Hub id, or 'packaged:minilm' (offline)."
        ) from err
    if model_args.head_hidden_size is not None:
        config = mlp_head_config(model_args, config)
    elif config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"{model_args.model_name_or_path!r} is a {config.model_type!r} model, which cannot do sequence "
            "classification (AutoModelForSequenceClassification has no class for it). Pass a text encoder such as "
            "'packaged:minilm', 'google/bert_uncased_L-4_H-512_A-8' or 'roberta-base'."
        )
    num = model_args.num_labels
    names = LABEL_NAMES if num == len(LABEL_NAMES) else [str(i) for i in range(num)]
    config.id2label = dict(enumerate(names))
    config.label2id = {v: k for k, v in config.id2label.items()}
    return name, config


def mlp_head_config(model_args: ModelArguments, encoder_config):
    """The `MLPHeadConfig` of an encoder with the MLP head of --head_hidden_size (the encoder must load with
    `AutoModel`)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    from hf_influence.mlp_head import MLPHeadConfig

    if encoder_config.model_type not in MODEL_MAPPING_NAMES:
        raise ValueError(
            f"{model_args.model_name_or_path!r} is a {encoder_config.model_type!r} model, which AutoModel cannot "
            "build, so --head_hidden_size cannot put an MLP head on it. Drop --head_hidden_size."
        )
    return MLPHeadConfig(encoder=encoder_config, num_labels=model_args.num_labels, **model_args.mlp_head_kwargs())


def encoder_config(config):
    """The encoder's own config (that of a model with the MLP head is nested in it)."""
    from hf_influence.mlp_head import MLPHeadConfig

    return config.encoder_config() if isinstance(config, MLPHeadConfig) else config


def load_tokenizer(model_args: ModelArguments, model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_special(model_args.tokenizer_name, "model") or model_path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; set one before fine-tuning.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_path: str, config, tokenizer, seed: int, quiet: bool = False):
    """A fresh classifier from ``model_path`` (the head is initialised from ``seed``).

    Weights are loaded in float32 whatever the checkpoint's dtype (transformers >= 5 would otherwise keep e.g. a
    float16 checkpoint in float16, and training float16 master weights under autocast diverges); mixed precision comes
    from ``--bf16``/``--fp16`` autocast.

    ``quiet`` hides the loading report (the newly initialised head) after the first load.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    verbosity = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    from hf_influence.mlp_head import MLPHeadConfig, MLPHeadForSequenceClassification

    try:
        if isinstance(config, MLPHeadConfig):  # the pretrained encoder under a new MLP head
            model = MLPHeadForSequenceClassification.from_encoder(model_path, config, dtype=torch.float32)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config,
                                                                       dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def make_optimizer(model, training_args, head_learning_rate: float | None):
    """AdamW with a separate head learning rate, or None (then the Trainer builds its default optimizer)."""
    if head_learning_rate is None:
        return None
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    base = getattr(model, model.base_model_prefix, None)
    if base is None:
        raise ValueError(f"{type(model).__name__} has no base model attribute; --head_learning_rate is not supported.")
    base_ids = {id(p) for p in base.parameters()}
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in base_ids, name in decay), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": training_args.learning_rate if is_base else head_learning_rate,
            "weight_decay": training_args.weight_decay if decays else 0.0,
        }
        for (is_base, decays), params in groups.items()
    ]
    return torch.optim.AdamW(
        param_groups, betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon
    )


def accuracy_metrics(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------

RESULT_COLUMNS = (
    "score", "strategy", "keep_fraction", "pruned_fraction", "num_train", "seed",
    "eval_accuracy", "test_accuracy", "train_seconds", "label_counts", "noisy_kept",
)


def summarize(rows: list[dict[str, Any]]):
    """Mean/std per (score, strategy, keep_fraction), with the test-accuracy gap to random at the same fraction."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    if frame.empty:
        return frame
    grouped = frame.groupby(["score", "strategy", "keep_fraction"], sort=False)
    summary = grouped.agg(
        num_train=("num_train", "mean"),
        runs=("seed", "count"),
        eval_mean=("eval_accuracy", "mean"),
        eval_std=("eval_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0),
        test_mean=("test_accuracy", "mean"),
        test_std=("test_accuracy", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0),
        noisy_kept=("noisy_kept", "mean"),
    ).reset_index()
    random = summary[summary["score"] == "random"].set_index("keep_fraction")["test_mean"]
    summary["test_vs_random"] = [
        row.test_mean - random[row.keep_fraction] if row.score != "random" and row.keep_fraction in random.index else
        np.nan
        for row in summary.itertuples()
    ]
    return summary


def format_table(summary) -> str:
    """A fixed-width text table of the summary (accuracies in %; with label noise, the kept sets' noisy share)."""
    if summary.empty:
        return "(no runs)"
    noisy = "noisy_kept" in summary.columns and summary["noisy_kept"].notna().any()
    header = f"{'score':<12} {'strategy':<9} {'kept':>5} {'n_train':>8} {'runs':>4} {'val acc %':>14} " \
             f"{'test acc %':>14} {'vs random':>9}" + (f" {'noisy %':>7}" if noisy else "")
    lines = [header, "-" * len(header)]
    for row in summary.itertuples():
        gap = "" if np.isnan(row.test_vs_random) else f"{100 * row.test_vs_random:+.2f}"
        lines.append(
            f"{row.score:<12} {row.strategy:<9} {row.keep_fraction:>5.2f} {int(row.num_train):>8d} {row.runs:>4d} "
            f"{100 * row.eval_mean:>7.2f} ± {100 * row.eval_std:<4.2f} {100 * row.test_mean:>7.2f} ± "
            f"{100 * row.test_std:<4.2f} {gap:>9}" + (f" {100 * row.noisy_kept:>7.2f}" if noisy else "")
        )
    return "\n".join(lines)


#: Share of the hardest examples whose corruption is measured (the paper compares the top 5% with the mislabeled set).
NOISE_TOP_FRACTION = 0.05


def noise_in_hardest(scored, scores: Sequence[str], fraction: float = NOISE_TOP_FRACTION) -> dict[str, float]:
    """With --label_noise: the share of corrupted pairs among each score's ``fraction`` hardest training pairs
    (``"hardest"`` selection on the score's hardness, so ties break as the pruning does), and the dataset's own share
    (``"dataset"``, what a random set has on average). Anand et al. report ~0.11 for VoG/TracIn/PVI, chance level."""
    from hf_influence.selection import select_by_score

    if "is_noisy" not in scored.column_names:
        return {}
    shares = {"dataset": float(np.mean(scored["is_noisy"]))}
    for score in scores:
        if score not in scored.column_names:
            continue
        hardest = select_by_score(scored, SCORES[score].hardness_column, fraction, "hardest")
        shares[score] = float(np.mean(hardest["is_noisy"]))
    return shares


def input_norm_correlations(scored) -> dict[str, float]:
    """With --grand_at_initialization: Spearman correlations of GraNd at init with the input-norm baseline
    (``input_norm``, Kirsch 2023) and with the length in tokens. Close to 1 means the GraNd ranking is mostly input
    norm / length, the reason Kirsch could not reproduce GraNd at initialisation (METHODS.md E.2)."""
    if "grand" not in scored.column_names or "input_norm" not in scored.column_names:
        return {}
    import pandas as pd

    frame = pd.DataFrame({"grand": scored["grand"], "input_norm": scored["input_norm"],
                          "num_tokens": [len(ids) for ids in scored["input_ids"]]})
    return {column: float(frame["grand"].corr(frame[column], method="spearman"))
            for column in ("input_norm", "num_tokens")}


def write_results(output_dir: Path, rows: list[dict[str, Any]], summary, config: dict[str, Any],
                  noise: dict[str, float] | None = None, grand_init: dict[str, float] | None = None) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    frame.to_csv(output_dir / "results.csv", index=False)
    payload = {
        "config": config,
        "runs": rows,
        "summary": json.loads(summary.to_json(orient="records")) if not summary.empty else [],
        "paper_reference_test_accuracy": PAPER_RESULTS,
    }
    if noise:
        payload["noise_in_hardest_5pct"] = noise
    if grand_init:
        payload["grand_at_initialization_spearman"] = grand_init
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Scoring phase
# ---------------------------------------------------------------------------------------------------------------------


def plain_training_arguments(args, **overrides):
    """A plain `TrainingArguments` with the same hyperparameters as ``args`` (a ScoringConfig), plus overrides."""
    from transformers import TrainingArguments

    names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(overrides)
    return TrainingArguments(**values)


class CheckpointSchedule(TrainerCallback):
    """Saves checkpoints at chosen epoch ends, at ``num_evenly_spaced`` evenly spaced steps, at ``fixed_steps``, and
    optionally at the end.

    After training, ``epoch_steps[k]`` is the global step of the end of epoch ``k`` (1-based) and ``steps`` the sorted
    evenly spaced steps; the Trainer writes each as ``<output_dir>/checkpoint-<step>``. ``fixed_steps`` beyond the
    run's last step stop it at once, before any training, with the fix in the message.
    """

    def __init__(self, num_evenly_spaced: int = 0, epochs: Sequence[int] = (), final: bool = False,
                 fixed_steps: Sequence[int] = ()) -> None:
        self.num_evenly_spaced = num_evenly_spaced
        self.epochs = set(epochs)
        self.final = final
        self.fixed_steps = sorted(set(fixed_steps))
        self.steps: list[int] = []
        self.epoch_steps: dict[int, int] = {}
        self.max_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.max_steps = state.max_steps
        n = self.num_evenly_spaced
        self.steps = sorted({max(1, round(state.max_steps * (i + 1) / n)) for i in range(n)}) if n else []
        if self.fixed_steps and self.fixed_steps[-1] > state.max_steps:
            raise ValueError(
                f"The scoring run has {state.max_steps} optimizer steps, fewer than the last TracIn checkpoint "
                f"({self.fixed_steps[-1]} = --num_score_checkpoints x --tracin_checkpoint_every). Lower "
                "--tracin_checkpoint_every or --num_score_checkpoints, or train longer (--scoring_num_train_epochs)."
            )
        return control

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step in self.steps or step in self.fixed_steps or (self.final and step >= state.max_steps):
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = int(round(state.epoch))
        if epoch in self.epochs and abs(state.epoch - epoch) < 1e-3:
            self.epoch_steps[epoch] = state.global_step
            control.should_save = True
        return control


@dataclass
class ScoringRun:
    """What one scoring run left behind."""

    seed: int
    output_dir: Path
    store: Any
    early_checkpoint: Path | None
    final_checkpoint: Path | None
    trajectory: list[Path]
    pvi_checkpoint: Path | None = None
    #: TracIn's own checkpoints (--tracin_checkpoint_every); empty when TracIn uses ``trajectory``
    tracin_trajectory: list[Path] = dataclasses.field(default_factory=list)
    #: a PVI null run's (only) input, the token columns of the empty pair as its training split tokenized it
    null_input: dict[str, list[int]] | None = None


def scoring_needs(scores: Sequence[str], tracin_own_checkpoints: bool = False,
                  grand_at_initialization: bool = False) -> dict[str, bool]:
    """Which checkpoints and tables the scoring runs must leave (``tracin_own_checkpoints``: TracIn has its own, so it
    does not need the evenly spaced trajectory; ``grand_at_initialization``: GraNd needs no trained checkpoint)."""
    sources = {SCORES[s].source for s in scores}
    return {
        "early": "el2n" in scores or ("grand" in scores and not grand_at_initialization),
        "final": "loss" in scores,
        "trajectory": "trajectory" in sources,
        "evenly_spaced": any(SCORES[s].source == "trajectory" and not (s == "tracin" and tracin_own_checkpoints)
                             for s in scores),
        "store": "store" in sources,
        "null": "null" in sources,
    }


def run_scoring_training(seed: int, first: bool, train, *, model_path: str, config, tokenizer, collator,
                         model_args: ModelArguments, prune_args: PruningArguments, training_args,
                         output_dir: Path, run_name: str | None = None) -> ScoringRun:
    """Fine-tune one scoring run with ScoringTrainer (signals recorded) and save the checkpoints the scorers need."""
    from hf_influence.trainer import ScoringTrainer

    needs = scoring_needs(prune_args.scores, tracin_own_checkpoints=bool(prune_args.tracin_checkpoint_every),
                          grand_at_initialization=prune_args.grand_at_initialization)
    run_dir = output_dir / "scoring" / (run_name or f"seed_{seed}")
    epochs = prune_args.scoring_num_train_epochs or training_args.num_train_epochs
    args = dataclasses.replace(
        training_args,
        output_dir=str(run_dir),
        seed=seed,
        num_train_epochs=epochs,
        save_strategy="no",
        save_only_model=True,
        save_total_limit=None,
        eval_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
        signals_dir=None,
    )
    schedule = CheckpointSchedule(
        num_evenly_spaced=prune_args.num_score_checkpoints if (first and needs["evenly_spaced"]) else 0,
        epochs=([prune_args.el2n_epoch] if needs["early"] else []) + ([prune_args.pvi_epoch] if needs["null"] else []),
        final=needs["final"],
        fixed_steps=prune_args.tracin_steps() if (first and "tracin" in prune_args.scores) else (),
    )
    model = load_model(model_path, config, tokenizer, seed, quiet=not first)
    trainer = ScoringTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[schedule],
        optimizers=(make_optimizer(model, args, model_args.head_learning_rate), None),
    )
    trainer.train()
    early = run_dir / f"checkpoint-{schedule.epoch_steps[prune_args.el2n_epoch]}" if needs["early"] else None
    pvi = run_dir / f"checkpoint-{schedule.epoch_steps[prune_args.pvi_epoch]}" if needs["null"] else None
    final = run_dir / f"checkpoint-{schedule.max_steps}" if needs["final"] else None
    trajectory = [run_dir / f"checkpoint-{step}" for step in schedule.steps]
    if first and needs["evenly_spaced"] and len(trajectory) < prune_args.num_score_checkpoints:
        logger.warning(
            f"The scoring run has only {schedule.max_steps} steps, so {len(trajectory)} distinct checkpoints were "
            f"saved instead of --num_score_checkpoints={prune_args.num_score_checkpoints}."
        )
    tracin = [run_dir / f"checkpoint-{step}" for step in schedule.fixed_steps]
    return ScoringRun(seed, run_dir, trainer.signal_store, early, final, trajectory, pvi, tracin)




def run_null_training(train, *, prune_args: PruningArguments, data_args: DataArguments, tokenizer, training_args,
                      **kwargs) -> ScoringRun:
    """PVI's null model: the first scoring run's recipe, for ``--pvi_epoch`` epochs, on the same rows with every pair
    emptied (`hf_influence.scorers.pvi.make_null_input_dataset`, Ethayarajh et al. 2022) and tokenized as the real
    split is (e.g. `[CLS] [SEP] [SEP]`)."""
    from hf_influence.scorers.base import TOKEN_COLUMNS
    from hf_influence.scorers.pvi import make_null_input_dataset

    text = train.remove_columns([c for c in TOKEN_COLUMNS if c in train.column_names])
    emptied = make_null_input_dataset(text, [data_args.premise_column, data_args.hypothesis_column])
    null_train = tokenize_splits({"null (PVI)": emptied}, tokenizer, data_args,
                                 training_args.main_process_first)["null (PVI)"]
    seed = prune_args.scoring_seeds[0]
    # only the final checkpoint, after --pvi_epoch epochs
    null_args = dataclasses.replace(prune_args, scores=["loss"], selections=[],
                                    scoring_num_train_epochs=prune_args.pvi_epoch)
    run = run_scoring_training(seed, False, null_train, prune_args=null_args, tokenizer=tokenizer,
                               training_args=training_args, run_name=f"null_seed_{seed}", **kwargs)
    first = null_train[0]
    run.null_input = {c: list(first[c]) for c in TOKEN_COLUMNS if c in null_train.column_names}
    return run


def attach_scores(train, runs: list[ScoringRun], tokenizer, prune_args: PruningArguments, data_args: DataArguments,
                  config, null_run: ScoringRun | None = None, model_path: str | None = None, target=None,
                  features_dir: Path | None = None):
    """Add one float32 column per requested score to the tokenised training set (main process only).

    - ``el2n``/``grand``: EL2NScorer/GraNdScorer in eval mode at the end of epoch ``--el2n_epoch`` of EVERY scoring
      seed, the per-seed scores averaged (Paul et al.'s protocol, METHODS.md A.2; Anand et al. B.1 use epoch 2 and 10
      runs). The trainer's ``el2n_epoch_<k>`` (dropout on, weights moving within the epoch) is not used.
      With ``--grand_at_initialization``, GraNd instead takes ``model_path``'s encoder with each scoring seed's fresh
      head (step 0), averaged over the seeds.
    - ``loss``: LossScorer at the end of every scoring run, averaged over seeds.
    - ``forgetting``/``aum``/``confidence``/``variability``: the SignalStore summaries of the scoring runs, averaged
      over seeds (``SignalStore.combine``); forgetting counts the dense evaluations when ``--dense_eval_steps`` is set.
    - ``vog_class``/``vog_dataset``: raw VoGScorer (``--vog_reduce``) over the N_c checkpoints of the first scoring
      run (Anand et al.'s one-run protocol), z-scored within the gold class / over the dataset
      (``normalization.add_normalized_column``); the raw ``vog`` column is kept too.
    - ``tracin``: TracInScorer self-influence over the same N_c checkpoints, constant eta = 1 and the gradients of the
      last encoder layer (``--tracin_params``), as Anand et al.
    - ``grad_cosine``: GradientSimilarityScorer: projected per-example gradients (every trainable Linear layer,
      ``--similarity_projection`` squared per layer) of every training pair and of the ``target`` pairs at each of the
      N_c checkpoints of the first scoring run (written under ``features_dir``), cosine, summed over the checkpoints
      with equal weights and reduced over the target pairs (``--similarity_reduce``): LESS-style targeted selection
      (Xia et al. 2024) without its Adam preconditioning or LoRA warm-up.
    - ``pvi``: PVIScorer, log2 p(y|x) at the end of epoch ``--pvi_epoch`` of every scoring seed (averaged) minus
      log2 p(y|empty pair) of ``null_run``, the first seed's recipe trained ``--pvi_epoch`` epochs on empty pairs
      (Ethayarajh et al. 2022, Def. 3; Anand et al. train both for 2 epochs).

    Returns:
        `tuple`: (scored dataset, card entries of the score columns, scoring checkpoints, combined summary or None,
        Spearman stability of the store scores over seeds or None).
    """
    from hf_influence.normalization import add_normalized_column
    from hf_influence.scorers import get_scorer

    scores = prune_args.scores
    common = {"batch_size": prune_args.scoring_batch_size, "label_column": data_args.label_column,
              "tokenizer": tokenizer}
    entries: list[dict[str, Any]] = []
    scored = train

    def add(scorer) -> None:
        nonlocal scored
        scored = scorer(scored)
        entries.extend(scorer.card_entries() if hasattr(scorer, "card_entries") else [scorer.card_entry()])

    early = [run.early_checkpoint for run in runs if run.early_checkpoint is not None]
    final = [run.final_checkpoint for run in runs if run.final_checkpoint is not None]
    trajectory = runs[0].trajectory if runs else []
    tracin_own = runs[0].tracin_trajectory if runs else []  # TracIn's own checkpoints (--tracin_checkpoint_every)
    if "el2n" in scores:
        add(get_scorer("el2n", model=early, **common))
    if "grand" in scores:
        if prune_args.grand_at_initialization:
            at_init = [load_model(model_path, config, tokenizer, seed, quiet=True)
                       for seed in prune_args.scoring_seeds]
            add(get_scorer("grand", model=at_init, **common))
            entries[-1]["definition"] += ", at initialisation (the pretrained encoder, each scoring seed's fresh head)"
            entries[-1]["config"]["initialization_seeds"] = list(prune_args.scoring_seeds)
            # Kirsch's baseline: GraNd at init that merely follows the input norm (the seeds share the embeddings)
            add(get_scorer("input_norm", model=at_init[0], **common))
        else:
            add(get_scorer("grand", model=early, **common))
    if "loss" in scores:
        add(get_scorer("loss", model=final, **common))
    summary = stability = None
    store_scores = [s for s in scores if SCORES[s].source == "store"]
    if store_scores:
        from hf_influence.store import SignalStore

        summary, stability = SignalStore.combine([run.store for run in runs])
        add(get_scorer("dynamics", store_or_summary=summary, columns=store_scores))
    vog = [s for s in scores if s.startswith("vog_")]
    if vog:
        vog_scorer = get_scorer("vog", model=trajectory, reduce=prune_args.vog_reduce, normalization=None, **common)
        add(vog_scorer)
        raw = vog_scorer.card_entry()
        for name in vog:
            by = name.split("_", 1)[1]
            scored = add_normalized_column(scored, raw["column"], by=by, label_column=data_args.label_column,
                                           output_column=name)
            where = "within the gold class" if by == "class" else "over the dataset"
            definition = f"{raw['definition']}, z-scored {where}"
            entries.append({**raw, "name": name, "column": name, "definition": definition,
                            "config": {**raw["config"], "normalization": by}})
    if "tracin" in scores:
        params = prune_args.tracin_params
        if params == "last_layer":
            params = rf"\.layer\.{encoder_config(config).num_hidden_layers - 1}\."
        add(get_scorer("tracin", model=tracin_own or trajectory, learning_rates=1.0,
                       params=None if params == "all" else params, **common))
    if "grad_cosine" in scores:
        add(grad_cosine_scorer(train, target, trajectory, tokenizer, prune_args, data_args, features_dir))
    null = [null_run.final_checkpoint] if null_run is not None else []
    pvi_real = [run.pvi_checkpoint for run in runs if run.pvi_checkpoint is not None]
    if "pvi" in scores:
        empty = null_run.null_input
        add(get_scorer("pvi", model=pvi_real, null_model=null, null_input_ids=empty["input_ids"],
                       null_token_type_ids=empty.get("token_type_ids"), **common))
    checkpoints: list[str] = []
    for path in [*early, *final, *trajectory, *tracin_own, *pvi_real, *null]:
        if str(path) not in checkpoints:
            checkpoints.append(str(path))
    return scored, entries, checkpoints, summary, stability


def grad_cosine_scorer(train, target, trajectory: list[Path], tokenizer, prune_args: PruningArguments,
                       data_args: DataArguments, features_dir: Path):
    """The ``grad_cosine`` scorer: projected gradients of ``train`` and ``target`` at every trajectory checkpoint
    (resumable folders ``features_dir/{train,target}_<c>``), compared by cosine."""
    from hf_influence.grads import GradientProjector, write_projected_gradients
    from hf_influence.scorers import get_scorer, load_checkpoint

    if target is None or not len(target):
        raise ValueError("grad_cosine needs target pairs (the first --target_samples validation pairs).")
    size = prune_args.similarity_projection
    folders: dict[str, list[Path]] = {"train": [], "target": []}
    for index, checkpoint in enumerate(trajectory):
        model = load_checkpoint(checkpoint, task="sequence_classification")
        projector = GradientProjector(model, k_in=size, k_out=size, seed=0)
        for name, data in (("train", train), ("target", target)):
            folders[name].append(write_projected_gradients(
                model, data, features_dir / f"{name}_{index}", projector=projector,
                batch_size=prune_args.scoring_batch_size, tokenizer=tokenizer, label_column=data_args.label_column))
    return get_scorer("gradient_similarity", train_features=folders["train"], query_features=folders["target"],
                      normalize=True, reduce=prune_args.similarity_reduce, column="grad_cosine")


def join_scores(train, scores):
    """Add the score columns of ``scores`` (``example_id`` + columns, same rows) to ``train`` (non-main processes)."""
    ids = np.asarray(scores[EXAMPLE_ID])
    if not np.array_equal(ids, np.asarray(train[EXAMPLE_ID])):
        raise RuntimeError("The scores written by the main process do not match this process's training rows.")
    for column in scores.column_names:
        if column != EXAMPLE_ID:
            train = train.add_column(column, scores[column], feature=scores.features[column])
    return train


def save_scored(scored, path: Path, entries, checkpoints, summary, stability, model_args: ModelArguments,
                data_args: DataArguments, prune_args: PruningArguments, push: bool, training_args) -> None:
    """Save the scored training split (text, label, id and score columns) with its card; push it when asked."""
    from hf_influence.hub import push_scored_dataset, save_scored_dataset

    keep = [data_args.premise_column, data_args.hypothesis_column, data_args.label_column, EXAMPLE_ID]
    keep += [c for c in ("original_label", "is_noisy") if c in scored.column_names]  # --label_noise
    data = scored.select_columns(keep + [e["column"] for e in entries])
    card = {
        "scorers": entries,
        "base_model": model_args.model_name_or_path,
        "checkpoints": checkpoints,
        "seeds": prune_args.scoring_seeds,
        "summary": summary,
        "extra": {
            "recipe": "recipes/snli_prune.py",
            "dataset": data_args.dataset_name,
            "max_train_samples": data_args.max_train_samples,
            "scoring_num_train_epochs": prune_args.scoring_num_train_epochs or training_args.num_train_epochs,
            "el2n_epoch": prune_args.el2n_epoch,
            "pvi_epoch": prune_args.pvi_epoch,
            "num_score_checkpoints": prune_args.num_score_checkpoints,
            "dense_eval_steps": training_args.dense_eval_steps,
            "dense_eval_max_epoch": training_args.dense_eval_max_epoch,
            "seed_stability_spearman": None if stability is None else stability.dropna().to_dict(),
        },
        "label_column": data_args.label_column,
        "license": "cc-by-sa-4.0",
        "tags": ["snli", "natural-language-inference"],
        "task_categories": ["text-classification"],
        "pretty_name": "SNLI training pairs with example scores",
    }
    save_scored_dataset(data, path, overwrite=True, **card)
    if push:
        push_scored_dataset(data, prune_args.hub_repo_id, token=training_args.hub_token,
                            private=prune_args.hub_private, **card)


# ---------------------------------------------------------------------------------------------------------------------
# Pruning and re-fine-tuning phase
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneContext:
    """Everything a re-fine-tuning run shares with the others."""

    model_path: str
    config: Any
    tokenizer: Any
    collator: Any
    eval_dataset: Any
    test_dataset: Any
    model_args: ModelArguments
    training_args: Any
    label_column: str
    num_labels: int
    output_dir: Path


def finetune(train, ctx: FinetuneContext, seed: int, run_name: str):
    """Fine-tune a FRESH model on ``train`` and return its validation/test accuracy (and the Trainer).

    Args:
        train (`Dataset`): the (kept) tokenised training pairs.
        ctx (`FinetuneContext`): model, data and hyperparameters shared by every run.
        seed (`int`): seed of the head initialisation and of the data order.
        run_name (`str`): sub-folder of ``output_dir/finetune`` for the Trainer's files.

    Returns:
        `tuple`: (a dict with num_train, seed, eval_accuracy, test_accuracy, train_seconds, label_counts; the Trainer).
    """
    from transformers import Trainer

    args = plain_training_arguments(
        ctx.training_args,
        output_dir=str(ctx.output_dir / "finetune" / run_name),
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
    )
    model = load_model(ctx.model_path, ctx.config, ctx.tokenizer, seed, quiet=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=ctx.collator,
        processing_class=ctx.tokenizer,
        compute_metrics=accuracy_metrics,
        optimizers=(make_optimizer(model, args, ctx.model_args.head_learning_rate), None),
    )
    begin = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - begin
    metrics = trainer.evaluate(ctx.eval_dataset, metric_key_prefix="eval")
    test_accuracy = float("nan")
    if ctx.test_dataset is not None:
        test_accuracy = trainer.evaluate(ctx.test_dataset, metric_key_prefix="test")["test_accuracy"]
    for folder in (Path(args.output_dir), Path(args.output_dir).parent):  # the Trainer left nothing there
        try:
            folder.rmdir()
        except OSError:
            pass
    labels = np.asarray(train[ctx.label_column])
    return {
        "num_train": len(train),
        "seed": seed,
        "eval_accuracy": float(metrics["eval_accuracy"]),
        "test_accuracy": float(test_accuracy),
        "train_seconds": train_seconds,
        "label_counts": json.dumps(np.bincount(labels, minlength=ctx.num_labels).tolist()),
        "noisy_kept": float(np.mean(train["is_noisy"])) if "is_noisy" in train.column_names else float("nan"),
    }, trainer


@dataclass
class BestModel:
    """The best pruned model so far (by validation accuracy)."""

    eval_accuracy: float = -1.0
    row: dict[str, Any] | None = None
    report: Any = None


def run_grid(scored, ctx: FinetuneContext, prune_args: PruningArguments, timer: PhaseTimer, is_main: bool):
    """Fine-tune on the full data, on random subsets and on every score-based selection; one row per run."""
    from hf_influence.selection import select_by_score

    rows: list[dict[str, Any]] = []
    best = BestModel()
    best_dir = ctx.output_dir / "best_pruned_model"
    fractions = [f for f in prune_args.keep_fractions if f < 1.0]
    if len(fractions) < len(prune_args.keep_fractions):
        logger.info("keep fraction 1.0 is the full training set: it is reported by the 'full' reference runs.")

    def record(row: dict[str, Any], phase: str) -> None:
        rows.append(row)
        timer.runs.append({k: row[k] for k in ("score", "strategy", "keep_fraction", "seed", "train_seconds")})
        if is_main:
            logger.warning(
                f"[{phase}] {row['score']}/{row['strategy']} keep={row['keep_fraction']:.2f} seed={row['seed']}: "
                f"val acc {100 * row['eval_accuracy']:.2f}%, test acc {100 * row['test_accuracy']:.2f}% "
                f"({row['num_train']} pairs, {row['train_seconds']:.0f}s)"
            )

    if prune_args.include_full:
        with timer.phase("finetune_full"):
            for seed in prune_args.finetune_seeds:
                result, _ = finetune(scored, ctx, seed, f"full_seed{seed}")
                record({"score": "full", "strategy": "none", "keep_fraction": 1.0, "pruned_fraction": 0.0, **result},
                       "full data")
    for fraction in fractions:
        if prune_args.include_random:
            for seed in prune_args.finetune_seeds:
                with timer.phase("selection"):
                    kept = select_by_score(scored, None, fraction, "random", seed=seed,
                                           class_balanced=prune_args.class_balanced, label_column=ctx.label_column)
                with timer.phase("finetune_random"):
                    result, _ = finetune(kept, ctx, seed, f"random_keep{fraction:g}_seed{seed}")
                record({"score": "random", "strategy": "random", "keep_fraction": fraction,
                        "pruned_fraction": 1.0 - fraction, **result}, "random")
        for score, strategy in prune_args.selection_grid():
            for seed in prune_args.finetune_seeds:
                with timer.phase("selection"):
                    kept, report = select_by_score(
                        scored, SCORES[score].hardness_column, fraction, strategy,
                        class_balanced=prune_args.class_balanced, label_column=ctx.label_column, seed=seed,
                        return_report=True,
                        **prune_args.strategy_kwargs(strategy),
                    )
                with timer.phase(f"finetune_{score}"):
                    run_name = f"{score}_{strategy}_keep{fraction:g}_seed{seed}"
                    result, trainer = finetune(kept, ctx, seed, run_name)
                row = {"score": score, "strategy": strategy, "keep_fraction": fraction,
                       "pruned_fraction": 1.0 - fraction, **result}
                record(row, "pruned")
                if row["eval_accuracy"] > best.eval_accuracy:  # same on every rank: metrics are gathered
                    with timer.phase("save_best_model"):
                        trainer.save_model(str(best_dir))
                    best = BestModel(row["eval_accuracy"], row, report)
                del trainer
    return rows, best, best_dir


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------


def write_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy vs fraction kept: one line per score/strategy, random as baseline, full data marked."""
    import pandas as pd

    from hf_influence.plots import plot_accuracy_vs_fraction

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    metric = "test_accuracy" if frame["test_accuracy"].notna().any() else "eval_accuracy"
    full = frame.loc[frame["score"] == "full", metric]
    curves = frame[frame["score"] != "full"].copy()
    if curves.empty:
        return None
    curves["method"] = [s if s == "random" else f"{s} ({t})" for s, t in zip(curves["score"], curves["strategy"])]
    curves[metric] = 100 * curves[metric]
    return plot_accuracy_vs_fraction(
        curves,
        path,
        fraction_column="keep_fraction",
        metric_column=metric,
        method_column="method",
        random_method="random",
        full_data=float(100 * full.mean()) if len(full) else None,
        title=f"SNLI: {metric.replace('_', ' ')} (%) vs fraction of training pairs kept",
    )


def write_best_model_card(best: BestModel, best_dir: Path, entries: list[dict[str, Any]], *, model_name: str,
                          dataset_ref: str, training_args, checkpoints: Sequence[Any]) -> None:
    from hf_influence.cards import render_model_card
    from hf_influence.mlp_head import MODEL_TYPE, loading_instructions

    row = best.row
    saved_config = json.loads((best_dir / "config.json").read_text())
    mlp_head = saved_config.get("model_type") == MODEL_TYPE
    card = render_model_card(
        base_model=model_name,
        dataset=dataset_ref,
        selection=best.report,
        results={"eval_accuracy": row["eval_accuracy"], "test_accuracy": row["test_accuracy"],
                 "keep_fraction": row["keep_fraction"], "num_train": row["num_train"]},
        scorers=[e for e in entries if e["column"] == row["score"]],
        checkpoints=checkpoints,
        seeds=[row["seed"]],
        training={
            "learning_rate": training_args.learning_rate,
            "num_train_epochs": training_args.num_train_epochs,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "selection": f"{row['score']} / {row['strategy']}, keep {row['keep_fraction']:.2f}",
        },
        model_name=f"{Path(model_name).name}-snli-{row['score']}-{row['strategy']}-keep{row['keep_fraction']:g}",
        pipeline_tag="text-classification",
        tags=["snli", "natural-language-inference", "data-pruning"],
        usage=loading_instructions(str(best_dir)) if mlp_head else None,
    )
    card.save(str(best_dir / "README.md"))


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------


def run(model_args: ModelArguments, data_args: DataArguments, prune_args: PruningArguments, training_args) -> dict:
    """The whole recipe (see the module docstring). Returns the results payload written to ``results.json``."""
    import datasets
    from accelerate import PartialState
    from transformers import DataCollatorWithPadding

    timer = PhaseTimer()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _ = training_args.device  # sets up the process group from the training arguments
    state = PartialState()
    if state.num_processes != world_size:
        raise RuntimeError(
            f"Launched with WORLD_SIZE={world_size} but the process group has {state.num_processes} process(es). "
            "On a CPU-only machine launch with recipes/accelerate/cpu_2proc.yaml and pass --use_cpu true (or set "
            "ACCELERATE_USE_CPU=true)."
        )
    is_main = state.is_main_process
    push_dataset = bool(training_args.push_to_hub)
    training_args.push_to_hub = False  # the Trainers never push models; --push_to_hub pushes the scored dataset
    if push_dataset and not prune_args.hub_repo_id:
        raise ValueError("--push_to_hub needs --hub_repo_id user/dataset-name (the dataset repo to create).")
    output_dir = Path(training_args.output_dir)
    scoring_epochs = prune_args.scoring_num_train_epochs or training_args.num_train_epochs
    if "pvi" in prune_args.scores and prune_args.pvi_epoch > scoring_epochs:
        raise ValueError(
            f"--pvi_epoch {prune_args.pvi_epoch} is after the end of the scoring runs ({scoring_epochs} epochs); "
            "lower --pvi_epoch or raise --scoring_num_train_epochs."
        )
    if {"el2n", "grand"} & set(prune_args.scores) and prune_args.el2n_epoch > scoring_epochs:
        raise ValueError(
            f"--el2n_epoch {prune_args.el2n_epoch} is after the end of the scoring runs ({scoring_epochs} epochs); "
            "lower --el2n_epoch or raise --scoring_num_train_epochs."
        )

    with timer.phase("validate_model"):
        model_path, config = load_model_config(model_args)
    with timer.phase("data"):
        raw = load_raw_splits(data_args)
        validate_columns(raw, data_args)
        splits = prepare_splits(raw, data_args, model_args.num_labels)
        tokenizer = load_tokenizer(model_args, model_path)
        tokenized = tokenize_splits(splits, tokenizer, data_args, training_args.main_process_first)
    train = tokenized["train"]
    target = None
    if "grad_cosine" in prune_args.scores:  # the target set of grad_cosine is held out of the validation accuracy
        validation = tokenized["validation"]
        if prune_args.target_samples >= len(validation):
            raise ValueError(f"--target_samples {prune_args.target_samples} leaves no validation pair to evaluate on "
                             f"({len(validation)} in all); lower it.")
        target = validation.select(range(prune_args.target_samples))
        tokenized["validation"] = validation.select(range(prune_args.target_samples, len(validation)))
    collator = DataCollatorWithPadding(tokenizer)
    if is_main:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in tokenized.items())
        logger.warning(f"SNLI pairs after dropping unlabelled ones and subsetting: {sizes}")

    with timer.phase("scoring_training"):
        runs = [
            run_scoring_training(
                seed, index == 0, train, model_path=model_path, config=config, tokenizer=tokenizer,
                collator=collator, model_args=model_args, prune_args=prune_args, training_args=training_args,
                output_dir=output_dir,
            )
            for index, seed in enumerate(prune_args.scoring_seeds if prune_args.scores else [])
        ]
        null_run = None
        if prune_args.scores and scoring_needs(prune_args.scores)["null"]:
            null_run = run_null_training(
                train, model_path=model_path, config=config, tokenizer=tokenizer, collator=collator,
                model_args=model_args, prune_args=prune_args, data_args=data_args, training_args=training_args,
                output_dir=output_dir,
            )
    scored_dir = output_dir / "scored_dataset"
    entries: list[dict[str, Any]] = []
    checkpoints: list[Any] = []
    if prune_args.scores:
        with timer.phase("scoring_scorers"):
            if is_main:
                scored, entries, checkpoints, summary, stability = attach_scores(
                    train, runs, tokenizer, prune_args, data_args, config, null_run, model_path=model_path,
                    target=target, features_dir=output_dir / "scoring" / "gradient_features")
                scored.select_columns([EXAMPLE_ID, *[e["column"] for e in entries]]).to_parquet(
                    str(output_dir / "scores.parquet"))
            state.wait_for_everyone()
            if not is_main:
                scored = join_scores(train, datasets.Dataset.from_parquet(str(output_dir / "scores.parquet")))
        with timer.phase("save_scored_dataset"):
            if is_main:
                save_scored(scored, scored_dir, entries, checkpoints, summary, stability, model_args, data_args,
                            prune_args, push_dataset, training_args)
    else:
        scored = train

    ctx = FinetuneContext(
        model_path=model_path, config=config, tokenizer=tokenizer, collator=collator,
        eval_dataset=tokenized["validation"], test_dataset=tokenized.get("test"), model_args=model_args,
        training_args=training_args, label_column=data_args.label_column, num_labels=model_args.num_labels,
        output_dir=output_dir,
    )
    rows, best, best_dir = run_grid(scored, ctx, prune_args, timer, is_main)

    payload: dict[str, Any] = {}
    if is_main:
        with timer.phase("report"):
            summary = summarize(rows)
            config_record = {
                "model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                "pruning": dataclasses.asdict(prune_args),
                "training": {k: v for k, v in training_args.to_dict().items() if not k.startswith("hub_token")},
                "num_processes": state.num_processes, "device": str(state.device),
            }
            noise = noise_in_hardest(scored, prune_args.scores)
            grand_init = input_norm_correlations(scored)
            write_results(output_dir, rows, summary, config_record, noise, grand_init)
            write_plot(rows, output_dir / "accuracy_vs_fraction.png")
            if best.row is not None:
                write_best_model_card(
                    best, best_dir, entries, model_name=model_args.model_name_or_path,
                    dataset_ref=prune_args.hub_repo_id if push_dataset else str(scored_dir),
                    training_args=training_args, checkpoints=checkpoints,
                )
            payload = json.loads((output_dir / "results.json").read_text())
        timing = timer.to_dict()
        (output_dir / "timing.json").write_text(json.dumps(timing, indent=2))
        print("\n" + format_table(summary))
        if noise:
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in noise.items() if k != "dataset")
            print(f"\nCorrupted pairs among each score's {100 * NOISE_TOP_FRACTION:g}% hardest (dataset: "
                  f"{100 * noise['dataset']:.1f}%): {shares}")
        if grand_init:
            print(f"\nGraNd at initialisation, Spearman with the input norm {grand_init['input_norm']:.2f} and with "
                  f"the length {grand_init['num_tokens']:.2f} (Kirsch's baseline)")
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in timing["phases"].items())
        print(f"\nTotal {timing['total_seconds']:.0f}s ({phases}). Outputs in {output_dir}")
        print("Paper (BERT-small, full SNLI, test acc %): " + "; ".join(f"{k}: {v}" for k, v in PAPER_RESULTS.items()))
    state.wait_for_everyone()
    return payload


def use_gloo_on_cpu_only_machines() -> None:
    """Under torchrun/accelerate (WORLD_SIZE > 1) without a GPU, make the processes one DDP group over gloo.

    Must run before the training arguments are parsed: they create the process group, and on a CPU-only machine
    accelerate only forms a multi-process CPU group when asked for CPU (``ACCELERATE_USE_CPU``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"


def main(argv: Sequence[str] | None = None) -> dict:
    use_gloo_on_cpu_only_machines()
    model_args, data_args, prune_args, training_args = parse_args(argv)
    try:
        return run(model_args, data_args, prune_args, training_args)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import gc

            gc.collect()  # free the trainers' DDP wrappers (reference cycles), which hold the group and its work
            dist.destroy_process_group()  # a rank that exits with the gloo group still up can abort at exit


if __name__ == "__main__":
    main()
