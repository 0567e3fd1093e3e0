"""Text(-pair) classification for pruning experiments: data, model and metric helpers, and their flags.

What the SNLI recipe (``recipes/snli_prune.py``) needs that any sentence(-pair) classification pipeline can reuse:
load train/validation/test splits from a local folder of JSON lines / JSON / Parquet files or from the Hub (with a
clear offline error), add stable example ids before any filtering, drop unlabelled rows, subset, inject label noise,
tokenise pairs, load an encoder with a sequence-classification head (or the paper's MLP head), an optimizer with a
separate head learning rate, and accuracy. `ModelArguments` and `DataArguments` are the flags, for `RecipeParser`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

LABEL_NAMES = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PACKAGED_MODELS = ("packaged:minilm",)


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


def load_model(model_path: str, config, tokenizer, seed: int | None, quiet: bool = False):
    """A fresh classifier from ``model_path`` (the head is initialised from ``seed``; None: from the current RNG state,
    e.g. after `PruningExperiment` seeded the run).

    Weights are loaded in float32 whatever the checkpoint's dtype (transformers >= 5 would otherwise keep e.g. a
    float16 checkpoint in float16, and training float16 master weights under autocast diverges); mixed precision comes
    from ``--bf16``/``--fp16`` autocast.

    ``quiet`` hides the loading report (the newly initialised head) after the first load.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    if seed is not None:
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
