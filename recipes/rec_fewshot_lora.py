#!/usr/bin/env python
"""DEALRec (Lin et al., SIGIR 2024): prune users by a surrogate's influence + the LLM's effort, LoRA-fine-tune an LLM
recommender on them, and compare with the paper's baselines at the same budget (stages: `hf_influence.rec.fewshot`).
The methods x `--finetune_seeds` grid is a resumable `PruningExperiment`; ``summary.md``/``summary.csv`` give 95%
intervals and the paired difference to random. Outputs and measured runs: recipes/README.md (DEALRec section).

    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_tiny.yaml --output_dir runs/rec_tiny   # CI
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --output_dir runs/rec_cpu     # CPU
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --device cuda --use_cpu false \
        --output_dir runs/rec_cpu_gpu
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_intervals_cpu.yaml --output_dir runs/rec_int
    accelerate launch recipes/rec_fewshot_lora.py --config recipes/configs/rec_paper.yaml \
        --model_name_or_path meta-llama/Llama-2-7b-hf --output_dir runs/rec_paper
    python recipes/rec_fewshot_lora.py --config recipes/configs/rec_cpu.yaml --dataset movielens-1m
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from hf_influence.config_files import RecipeParser
from hf_influence.experiments import PhaseTimer, PruningExperiment
from hf_influence.rec import fewshot as fs
from hf_influence.rec import fewshot_report as report


@dataclass
class DataArguments:
    """Which users, which catalogue, which evaluation."""

    dataset: str = field(default="games", metadata={"help": "'games'/'microlens-50k' (shared DEALRec folders), "
                         "'movielens-1m' (packaged), or any name with --data_dir."})
    data_dir: str | None = field(default=None, metadata={"help": "A DEALRec-format folder (overrides --dataset's)."})
    max_users: int | None = field(default=None, metadata={"help": "Keep only the first N users (quick runs)."})
    max_train_users: int | None = field(default=None, metadata={"help": "Then score and prune only the first N "
                                        "training users (test users still come from all loaded users)."})
    max_eval_users: int | None = field(default=None, metadata={"help": "Evaluate a seeded subset of N test users."})
    catalogue: str = field(default="all", metadata={"help": "'all' items (paper) or 'seen' (items of the loaded "
                           "users; cheaper, fewer candidates inflate Recall/NDCG)."})
    ks: list[int] | None = field(default=None, metadata={"help": "Cut-offs K (default 10 20 Games, 20 50 others)."})
    max_prompt_tokens: int = field(default=512, metadata={"help": "Token budget per prompt (paper: 512)."})
    prompt_domain: str | None = field(default=None, metadata={"help": "Prompt preset (default from --dataset)."})


@dataclass
class SurrogateArguments:
    """The SASRec surrogate (defaults = the authors', METHODS.md C.2)."""

    sasrec_hidden_size: int = field(default=64, metadata={"help": "Hidden size."})
    sasrec_num_layers: int = field(default=2, metadata={"help": "Blocks."})
    sasrec_num_heads: int = field(default=2, metadata={"help": "Attention heads."})
    sasrec_dropout: float = field(default=0.5, metadata={"help": "Hidden and attention dropout."})
    sasrec_max_len: int = field(default=50, metadata={"help": "Items of history kept."})
    sasrec_epochs: int = field(default=200, metadata={"help": "Training epochs."})
    sasrec_batch_size: int = field(default=500, metadata={"help": "Batch size."})
    sasrec_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    sasrec_keep: str = field(default="last", metadata={"help": "'last' (authors) or 'best' (valid Recall@5)."})
    sasrec_eval_every: int = field(default=5, metadata={"help": "Validate every N epochs."})


@dataclass
class PruningArguments:
    """DEALRec scores, selection, the baselines and the fine-tuning seeds."""

    methods: list[str] = field(default_factory=lambda: ["dealrec", "random", "el2n", "grand", "ccs"],
                               metadata={"help": f"Selections to fine-tune and evaluate, from {fs.METHODS}."})
    budget: int = field(default=1024, metadata={"help": "Few-shot size (users kept), the same for every method."})
    finetune_seeds: list[int] | None = field(default=None, metadata={"help": "LoRA fine-tuning seeds, shared by all "
                                             "methods (paired); each seed also seeds the selections' draws. Default: "
                                             "--seed only. With < 3 seeds the intervals bootstrap over test users."})
    lam: float | None = field(default=None, metadata={"help": "lambda of influence + lambda * effort (default: the "
                              "authors' value, 0.3 Games / 1.0 MicroLens, else 0.5)."})
    k: int = field(default=50, metadata={"help": "Coverage/CCS groups."})
    hard_prune: float = field(default=0.1, metadata={"help": "DEALRec code's top cut (0.0 = the paper)."})
    normalize: str = field(default="minmax", metadata={"help": "'minmax' (code) or 'none' (paper's raw sum)."})
    ccs_beta: float = field(default=0.1, metadata={"help": "CCS hard cutoff of the highest EL2N."})
    selection_seed: int | None = field(default=None, metadata={"help": "Kept for old commands: selections draw with "
                                       "each fine-tuning seed, so it must equal it (one seed) when given."})
    resample_negatives: bool = field(default=False, metadata={"help": "Fresh surrogate negatives at every draw (the "
                                     "authors' code); default fixed per user (reproducible)."})
    influence_solver: str = field(default="lissa", metadata={"help": "'lissa', 'cg' or 'exact'."})
    influence_scope: str | None = field(default=None, metadata={"help": "Regex of surrogate parameters (default: "
                                        "last attention output projection)."})
    lissa_depth: int = field(default=5000, metadata={"help": "LiSSA recursion depth."})
    lissa_damping: float = field(default=0.01, metadata={"help": "LiSSA damping."})
    lissa_scale: float = field(default=25.0, metadata={"help": "LiSSA scale."})
    influence_batch_size: int = field(default=256, metadata={"help": "Users per batch for v, CG and scoring."})
    effort_scope: str | None = field(default=None, metadata={"help": "Regex of LoRA parameters (default all; "
                                     "'authors' = last v_proj lora_B)."})
    effort_loss: str = field(default="full_prompt", metadata={"help": "'full_prompt' (authors) or 'response_only'."})
    effort_train_mode: bool = field(default=False, metadata={"help": "Effort with LoRA dropout on (authors' code)."})
    effort_batch_size: int = field(default=8, metadata={"help": "Prompts per effort batch."})


@dataclass
class LLMArguments:
    """The LLM recommender, LoRA and generation."""

    model_name_or_path: str = field(default=fs.PACKAGED_SMOLLM2, metadata={"help": "Hub id or folder of a causal "
                                    f"LM; '{fs.PACKAGED_SMOLLM2}' = packaged SmolLM2-135M-Instruct GGUF (offline)."})
    tiny_random_model: bool = field(default=False, metadata={"help": "CI: tiny random Llama, real tokenizer."})
    torch_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "LoRA "
                                           "target modules."})
    train_on_inputs: bool = field(default=True, metadata={"help": "Train on prompt tokens too (BIGRec)."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Early stopping on valid loss "
                                                "(paper: 5; needs eval_strategy)."})
    max_valid_users: int = field(default=256, metadata={"help": "Validation prompts for early stopping."})
    num_beams: int = field(default=4, metadata={"help": "Beams of the generation (paper: 4)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Generated tokens (paper: 128)."})
    generation_batch_size: int = field(default=8, metadata={"help": "Users per generate() call."})
    embed_batch_size: int = field(default=32, metadata={"help": "Texts per embedding forward pass."})


@dataclass
class RunArguments:
    """Where things run and what is written."""

    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda' or 'cuda:N' (scoring, eval)."})
    save_adapters: bool = field(default=True, metadata={"help": "Save the DEALRec LoRA adapter with a model card."})


ARGUMENT_CLASSES = (DataArguments, SurrogateArguments, PruningArguments, LLMArguments, RunArguments, TrainingArguments)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from accelerate import PartialState
    from transformers import set_seed

    from hf_influence.rec.dealrec import DEALREC_LAMBDA, combine_dealrec_scores
    from hf_influence.rec.grounding import embed_catalogue

    parser = RecipeParser(ARGUMENT_CLASSES, hint="See recipes/configs/rec_*.yaml.")
    data, surrogate, pruning, llm, run, training_args = parser.parse(argv)
    seed, seeds = training_args.seed, pruning.finetune_seeds or [training_args.seed]
    fs.check_options(data, pruning, llm, seeds=seeds, selection_seed=pruning.selection_seed, methods=pruning.methods)
    state, device, timer = PartialState(), fs.resolve_device(run.device), PhaseTimer()
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    ks = tuple(data.ks or fs.DEFAULT_KS.get(data.dataset, (10, 20)))
    lam = pruning.lam if pruning.lam is not None else DEALREC_LAMBDA.get(data.dataset, 0.5)
    prune = dataclasses.asdict(pruning)
    with timer("data"):
        users, catalogue = fs.load_users(data.dataset, data.data_dir, data.max_users, data.max_train_users)
    with timer("surrogate training"):
        trained = fs.train_surrogate(users, output_dir=out, seed=seed, **dataclasses.asdict(surrogate))
    scores, influence_scorer = fs.score_surrogate(
        trained.model, users["train"], device=device, seed=seed, timer=timer,
        **{k: prune[k] for k in ("resample_negatives", "influence_solver", "influence_scope", "lissa_depth",
                                 "lissa_damping", "lissa_scale", "influence_batch_size")})
    with timer("llm loading"):
        base_model, tokenizer = fs.load_llm(llm.model_name_or_path, device, tiny_random_model=llm.tiny_random_model,
                                            torch_dtype=llm.torch_dtype)
    domain = fs.prompt_domain(data.dataset, data.prompt_domain)
    with timer("prompts"):
        train_prompts, valid_prompts = fs.prompt_datasets(users, tokenizer, domain=domain, train_on_inputs=llm.
                                                          train_on_inputs, max_prompt_tokens=data.max_prompt_tokens)
    lora = fs.lora_config(llm.lora_r, llm.lora_alpha, llm.lora_dropout, llm.lora_target_modules)
    effort_scorer = None
    if "dealrec" in pruning.methods:
        with timer("effort"):
            scores["effort"], effort_scorer = fs.score_effort(
                base_model, tokenizer, train_prompts, lora, device=device,
                **{k: prune[k] for k in ("effort_scope", "effort_loss", "effort_train_mode", "effort_batch_size")})
        scores["dealrec"] = combine_dealrec_scores(scores["influence"], scores["effort"], lam=lam,
                                                   normalize=pruning.normalize)
    scores["user_id"] = users["train"]["user_id"]
    if state.is_main_process:
        report.write_scores(out / "scores.csv", scores)
    scored = fs.scored_user_dataset(train_prompts, scores)
    test_rows = fs.pick_eval_users(users["test"], data.max_eval_users, seed)
    if data.catalogue == "seen":
        catalogue = fs.seen_catalogue(catalogue, users)
    with timer("catalogue embedding"):
        item_ids, item_embeddings = embed_catalogue(base_model, tokenizer, catalogue, batch_size=llm.embed_batch_size)
    selections = fs.method_selections(pruning.methods, lam=lam, k=pruning.k, hard_prune=pruning.hard_prune,
                                      normalize=pruning.normalize, ccs_beta=pruning.ccs_beta)
    chosen = report.write_selections(scored, pruning.methods, selections, pruning.budget, seeds[0],
                                     out / "selected" if state.is_main_process else None)
    for method, info in chosen.items():
        timer.phases[f"selection/{method}"] = info["seconds"]
    dealrec = [PruningExperiment.run_id(s, pruning.budget, seeds[0]) for s in selections if s.label == "dealrec"]
    dealrec_run = dealrec[0] if dealrec and run.save_adapters else None
    runs = fs.FewShotRuns(
        base_model, tokenizer, lora, training_args, test_rows, item_ids, item_embeddings,
        dict(domain=domain, ks=ks, device=device, max_prompt_tokens=data.max_prompt_tokens, num_beams=llm.num_beams,
             max_new_tokens=llm.max_new_tokens, generation_batch_size=llm.generation_batch_size,
             embed_batch_size=llm.embed_batch_size),
        valid_prompts=valid_prompts.select(range(min(len(valid_prompts), llm.max_valid_users))),
        early_stopping_patience=llm.early_stopping_patience,
        save_adapter=(dealrec_run, out / "dealrec_adapter") if dealrec_run else None)
    settings = {cls.__name__: dataclasses.asdict(obj) for cls, obj in zip(ARGUMENT_CLASSES[:4], (data, surrogate,
                pruning, llm))}
    for key in ("methods", "finetune_seeds", "selection_seed"):
        settings["PruningArguments"].pop(key)
    experiment = PruningExperiment(
        scored, selections=selections, fractions=[pruning.budget], seeds=seeds, train_fn=runs.train,
        evaluate_fn=runs.evaluate, args=training_args, label_column=None, random_baseline="random" in pruning.methods,
        full_data="full" in pruning.methods, metric=f"recall@{ks[-1]}", save_best_model=False,
        fingerprint_extra={**settings, "num_eval_users": len(test_rows), "catalogue_size": len(item_ids)})
    with timer("fine-tuning and evaluation"):
        result = experiment.run(out)

    timing = {"stages": {**timer.phases, **report.run_stages(result)},
              "total_seconds": timer.to_dict()["total_seconds"]}
    timing["dealrec_pruning_overhead_s"] = sum(timing["stages"].get(k, 0.0) for k in (
        "surrogate training", "influence", "effort", "selection/dealrec"))
    methods = report.method_table(result, pruning.methods, ks, chosen, out)
    summary = {
        "dataset": data.dataset, "num_train_users": len(users["train"]), "num_eval_users": len(test_rows),
        "catalogue_size": len(item_ids), "budget": pruning.budget, "lambda": lam, "ks": list(ks),
        "finetune_seeds": seeds, "model": fs.base_model_name(llm.model_name_or_path, llm.tiny_random_model),
        "surrogate": {"kept_epoch": trained.kept_epoch,
                      "valid_metrics": trained.valid_metrics[-1] if trained.valid_metrics else {},
                      "train_loss_last": trained.train_loss[-1] if trained.train_loss else None},
        "influence": influence_scorer.card_entry(),
        "effort": effort_scorer.card_entry() if effort_scorer is not None else None,
        "methods": methods, "dealrec_vs_random": report.dealrec_vs_random(result, ks), "timing": timing,
        "paper_table2_bigrec": report.PAPER_TABLE2_BIGREC.get(data.dataset),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "processes": state.num_processes},
        "args": {**settings, "finetune_seeds": seeds, "methods": list(pruning.methods)},
    }
    if state.is_main_process:
        report.write_outputs(out, summary, result, ks)
        if dealrec_run and (out / "dealrec_adapter").is_dir() and "dealrec" in methods:
            report.write_adapter_card(out / "dealrec_adapter", summary, (influence_scorer, effort_scorer),
                                      dataset=data.data_dir or data.dataset, training={
                                          "budget": pruning.budget, "lambda": lam, "lora_r": llm.lora_r,
                                          "learning_rate": training_args.learning_rate,
                                          "epochs": training_args.num_train_epochs})
        report.print_summary(summary, ks, timer.table())
    return summary


if __name__ == "__main__":
    main()
