#!/usr/bin/env python
"""Score SNLI training pairs, prune them, re-fine-tune on what is kept, and compare with random and full data.

The protocol of Anand, Tan & Minakova, "Influence Scores at Scale for Efficient Language Data Sampling" (EMNLP 2023)
on the library's experiments API: `ScoringPlan` trains the scoring runs and attaches the score columns,
`PruningExperiment` fine-tunes a fresh model per selection x kept fraction x seed next to random (same seeds, paired)
and full data, resumable, and `ExperimentResult` reports 95% intervals and the paired difference to random.

Copy-paste commands (run from the repository root):

    # offline, 2 CPU cores, about an hour (packaged all-MiniLM-L6-v2, the shared SNLI copy)
    python recipes/snli_prune.py --config recipes/configs/snli_offline_cpu.yaml --output_dir runs/snli_offline
    # the same with two processes (CPU DDP through accelerate)
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/snli_prune.py \\
        --config recipes/configs/snli_offline_cpu.yaml --output_dir runs/snli_offline
    # CI-sized smoke run (a few dozen pairs, minutes)
    python recipes/snli_prune.py --config recipes/configs/snli_smoke.yaml --output_dir runs/snli_smoke
    # the paper's setup: BERT-small, full SNLI from the Hub, 10 epochs, batch 128, 3 runs (needs a GPU and network)
    accelerate launch recipes/snli_prune.py --config recipes/configs/snli_paper.yaml --output_dir runs/snli_paper
    # any flag overrides the YAML file (every flag: --help); prune a scored split again without re-scoring
    python recipes/snli_prune.py --config recipes/configs/snli_smoke.yaml --keep_fractions 0.5 0.7 \\
        --finetune_seeds 0 1 2 --scored_dataset runs/snli_smoke/scored_dataset --output_dir runs/snli_custom

Outputs in ``--output_dir``: ``results.csv`` (one row per run, written as each finishes: rerun the same command to
resume), ``summary.md``/``summary.csv`` (per cell mean and 95% interval, paired difference to random with its
interval and p-value), ``results.json``, ``accuracy_vs_fraction.png`` (with interval bands), ``scored_dataset/`` (the
scored split and its card; pushed with ``--push_to_hub --hub_repo_id user/name``), ``best_pruned_model/`` (with its
model card), ``timing.json`` and ``train.log`` (the fine-tuning logs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_influence.config import ScoringConfig
from hf_influence.config_files import RecipeParser
from hf_influence.experiments import PhaseTimer, PruningExperiment, Selection
from hf_influence.experiments import scoring as sc
from hf_influence.experiments import text_classification as tc
from hf_influence.experiments.diagnostics import NOISE_TOP_FRACTION, input_norm_correlations, noise_detection

PAPER_RESULTS = {  # Anand et al. (EMNLP 2023), BERT_SMALL on SNLI, test accuracy (%), mean +- std over 3 runs
    "full data": "85.52 +- 0.14", "vog_class, 45% pruned (easy)": "85.04 +- 0.20", "vog_dataset, 45% pruned (easy)":
    "84.60 +- 1.50", "forgetting, 45% pruned (least forgotten)": "84.58 +- 0.02"}


@dataclass
class PruningArguments:
    """How to prune and how often to repeat (what to score: the ScoringPlan flags)."""

    selections: list[str] = field(default_factory=list, metadata={
        "help": "'score:strategy' pairs (e.g. el2n:easiest aum:hardest vog_class:ccs; append ':balanced' for class-"
        "balanced, then ':key=value' strategy options, e.g. el2n:ccs:balanced:beta=0.3). Strategies read each "
        "score's polarity: 'hardest' keeps the hardest examples whichever way the "
        "score points. Default: each score with its default strategy; 'none': random and full data only."})
    keep_fractions: list[float] = field(default_factory=lambda: [0.55, 0.75], metadata={
        "help": "Fractions of the training set to KEEP, each in (0, 1]; 0.55 = 45%% pruned."})
    finetune_seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "Seeds of the re-fine-tuning runs, shared by every selection and random (paired comparisons)."})
    weighted_mapping: str = field(default="softmax", metadata={
        "help": "'weighted' strategy: 'softmax' of the score (Anand et al. B.2) or 'linear' map to [eps, 1]."})
    weighted_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of 'weighted'."})
    class_balanced: bool = field(default=False, metadata={
        "help": "Apply every selection (and random) within each class, keeping the class shares."})
    include_random: bool = field(default=True, metadata={"help": "Evaluate random selection at every fraction."})
    include_full: bool = field(default=True, metadata={"help": "Evaluate the full training set as reference."})
    scored_dataset: str | None = field(default=None, metadata={
        "help": "Prune a split scored by an earlier run (its scored_dataset/ folder) instead of scoring again."})
    hub_repo_id: str | None = field(default=None, metadata={
        "help": "Dataset repo for the scored training split (with --push_to_hub)."})
    hub_private: bool = field(default=False, metadata={"help": "Create the dataset repo as private."})

    def __post_init__(self) -> None:
        if self.weighted_mapping not in ("softmax", "linear"):
            raise ValueError(f"--weighted_mapping must be 'softmax' or 'linear', got {self.weighted_mapping!r}.")
        if not self.weighted_temperature > 0:
            raise ValueError(f"--weighted_temperature must be positive, got {self.weighted_temperature}.")
        bad = [f for f in self.keep_fractions if not 0.0 < f <= 1.0]
        if bad or not self.keep_fractions:
            raise ValueError(f"--keep_fractions must lie in (0, 1] (the fraction of training pairs KEPT), got "
                             f"{bad or 'none'}. For 45% pruned pass 0.55.")
        if not self.finetune_seeds:
            raise ValueError("Pass at least one --finetune_seeds value, e.g. --finetune_seeds 0 1 2.")

    def selection_grid(self, scores: Sequence[str]) -> list[Selection]:
        """The selections to evaluate, with the weighted strategy's options and --class_balanced applied."""
        if self.selections == ["none"]:  # only random and full data (e.g. the learning curve)
            return []
        items = self.selections or [sc.SCORES[s].default_selection for s in scores]
        out = []
        for item in items:
            score = item.split(":", 1)[0]
            if score not in scores:
                raise ValueError(f"--selections entry {item!r} uses {score!r}, not in --scores {list(scores)}.")
            strategy = item.split(":")[1] if ":" in item else ""
            options = {"mapping": self.weighted_mapping, "temperature": self.weighted_temperature} \
                if strategy == "weighted" else {}
            out.append(Selection.parse(item, class_balanced=self.class_balanced, options=options))
        return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    arguments = (tc.ModelArguments, tc.DataArguments, sc.ScoringPlan, PruningArguments, ScoringConfig)
    return RecipeParser(arguments, hint="See recipes/configs/ for the profiles.").parse(argv)


def load_data(model_args, data_args, plan: sc.ScoringPlan, training_args) -> tuple[str, Any, Any, dict, Any]:
    """The model's path and config, its tokenizer, the tokenised splits and the grad_cosine target (or None)."""
    model_path, config = tc.load_model_config(model_args)
    raw = tc.load_raw_splits(data_args)
    tc.validate_columns(raw, data_args)
    splits = tc.prepare_splits(raw, data_args, model_args.num_labels)
    tokenizer = tc.load_tokenizer(model_args, model_path)
    tokenized = tc.tokenize_splits(splits, tokenizer, data_args, training_args.main_process_first)
    target = None
    if "grad_cosine" in plan.scores:  # the target pairs are held out of the validation accuracy
        validation = tokenized["validation"]
        if plan.target_samples >= len(validation):
            raise ValueError(f"--target_samples {plan.target_samples} leaves no validation pair to evaluate on "
                             f"({len(validation)} in all); lower it.")
        target = validation.select(range(plan.target_samples))
        tokenized["validation"] = validation.select(range(plan.target_samples, len(validation)))
    return model_path, config, tokenizer, tokenized, target


def scoring_record(data_args, plan: sc.ScoringPlan) -> dict[str, Any]:  # what decides the scores
    return {"data": dataclasses.asdict(data_args), "scoring": dataclasses.asdict(plan)}


def save_scored(scored, path: Path, model_args, data_args, plan: sc.ScoringPlan, prune_args, training_args,
                push: bool) -> None:
    """Save the scored split (text, label, id and score columns) with its card; push it when asked."""
    from hf_influence.hub import push_scored_dataset, save_scored_dataset

    keep = [data_args.premise_column, data_args.hypothesis_column, data_args.label_column, "example_id"]
    keep += [c for c in ("original_label", "is_noisy") if c in scored.dataset.column_names]
    data = scored.dataset.select_columns(keep + [e["column"] for e in scored.entries])
    stability = None if scored.stability is None else scored.stability.dropna().to_dict()
    card = {"scorers": scored.entries, "base_model": model_args.model_name_or_path, "checkpoints": scored.checkpoints,
            "seeds": plan.scoring_seeds, "summary": scored.summary, "label_column": data_args.label_column,
            "extra": {"recipe": "recipes/snli_prune.py", **scoring_record(data_args, plan),
                      "dense_eval_steps": training_args.dense_eval_steps, "seed_stability_spearman": stability},
            "license": "cc-by-sa-4.0", "tags": ["snli", "natural-language-inference"],
            "task_categories": ["text-classification"], "pretty_name": "SNLI training pairs with example scores"}
    save_scored_dataset(data, path, overwrite=True, **card)
    if push:
        push_scored_dataset(data, prune_args.hub_repo_id, token=training_args.hub_token,
                            private=prune_args.hub_private, **card)


def run(model_args, data_args, plan: sc.ScoringPlan, prune_args: PruningArguments, training_args) -> dict:
    """The whole recipe (see the module docstring). Returns the results payload written to ``results.json``."""
    from accelerate import PartialState
    from transformers import DataCollatorWithPadding

    timer = PhaseTimer()
    _ = training_args.device  # sets up the process group from the training arguments
    state, world_size = PartialState(), int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world_size:
        raise RuntimeError(f"WORLD_SIZE={world_size} but the process group has {state.num_processes} process(es). On "
                           "a CPU-only machine launch with recipes/accelerate/cpu_2proc.yaml.")
    push = bool(training_args.push_to_hub)
    training_args.push_to_hub = False  # the Trainers never push models; --push_to_hub pushes the scored dataset
    if push and not prune_args.hub_repo_id:
        raise ValueError("--push_to_hub needs --hub_repo_id user/dataset-name (the dataset repo to create).")
    selections = prune_args.selection_grid(plan.scores)
    output_dir = Path(training_args.output_dir)
    with timer.phase("data"):
        model_path, config, tokenizer, tokenized, target = load_data(model_args, data_args, plan, training_args)
    collator = DataCollatorWithPadding(tokenizer)
    ctx = sc.ScoringContext(model_path, config, tokenizer, collator, training_args, data_args,
                            model_args.head_learning_rate, target)
    saved = Path(prune_args.scored_dataset or output_dir / "scored_dataset")
    reuse = bool(prune_args.scored_dataset) or sc.saved_scoring_matches(saved, scoring_record(data_args, plan))
    with timer.phase("scoring"):  # a rerun of the same command prunes the split it scored before
        scored = sc.ScoredSplit(tokenized["train"], [], []) if not selections else \
            sc.attach_saved_scores(tokenized["train"], saved) if reuse else \
            sc.score_split(tokenized["train"], plan, ctx, output_dir)
    if state.is_main_process and scored.entries and not reuse:
        with timer.phase("save_scored_dataset"):
            save_scored(scored, output_dir / "scored_dataset", model_args, data_args, plan, prune_args,
                        training_args, push)
    balanced = prune_args.class_balanced
    experiment = PruningExperiment(
        scored.dataset, selections=selections, fractions=prune_args.keep_fractions, seeds=prune_args.finetune_seeds,
        model_init=lambda: tc.load_model(model_path, config, tokenizer, seed=None, quiet=True), args=training_args,
        eval_datasets={"eval": tokenized["validation"], **{k: v for k, v in tokenized.items() if k == "test"}},
        compute_metrics=tc.accuracy_metrics, data_collator=collator, processing_class=tokenizer,
        optimizer_init=lambda model, args: tc.make_optimizer(model, args, model_args.head_learning_rate),
        label_column=data_args.label_column, random_baseline=prune_args.include_random and not balanced,
        class_balanced_random=prune_args.include_random and (balanced or any(s.class_balanced for s in selections)),
        full_data=prune_args.include_full, best_metric="eval_accuracy",
        fingerprint_extra={"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args)})
    with timer.phase("finetune"):
        result = experiment.run(output_dir)
    payload: dict[str, Any] = {}
    if state.is_main_process:
        with timer.phase("report"):
            result.save(output_dir)
            noise, grand_init = noise_detection(scored.dataset, plan.scores), input_norm_correlations(scored.dataset)
            result.write_best_model_card(
                base_model=model_args.model_name_or_path, scorers=scored.entries, checkpoints=scored.checkpoints,
                dataset=prune_args.hub_repo_id if push else str(output_dir / "scored_dataset"),
                training={"learning_rate": training_args.learning_rate, "epochs": training_args.num_train_epochs},
                pipeline_tag="text-classification", tags=["snli", "natural-language-inference", "data-pruning"])
            payload = {"config": {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                                  "scoring": dataclasses.asdict(plan), "pruning": dataclasses.asdict(prune_args),
                                  "num_processes": state.num_processes, "device": str(state.device)},
                       "runs": json.loads(result.rows.to_json(orient="records")),
                       "summary": json.loads(result.summary().to_json(orient="records")),
                       "paper_reference_test_accuracy": PAPER_RESULTS, "noise_in_hardest": noise.to_dict("records"),
                       "grand_at_initialization_spearman": grand_init or None}
            (output_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        (output_dir / "timing.json").write_text(json.dumps(timer.to_dict(), indent=2))
        print("\n" + result.to_markdown())
        if len(noise):
            print(f"\nCorrupted pairs in each score's {100 * NOISE_TOP_FRACTION:g}% hardest (95% CI, p vs random):\n"
                  + noise.to_string(index=False))
        if grand_init:
            print(f"\nGraNd at initialisation, Spearman with the input norm and the length: {grand_init}")
        print(f"\nTiming (s):\n{timer.table()}\nOutputs in {output_dir}")
    state.wait_for_everyone()
    return payload


def main(argv: Sequence[str] | None = None) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch  # a CPU-only machine forms a multi-process group over gloo only when asked for CPU

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        return run(*parse_args(argv))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import gc

            gc.collect()  # free the trainers' DDP wrappers (reference cycles), which hold the group
            dist.destroy_process_group()  # a rank that exits with the gloo group still up can abort at exit


if __name__ == "__main__":
    main()
