"""`ScoringPlan`: the scoring runs of a pruning experiment and the score columns they give a training split.

For a sequence-classification split: fine-tune scoring runs with `ScoringTrainer` (signals recorded from the
training pass), save the checkpoints each score needs (`CheckpointSchedule`), and attach one float32 column per score
through the registered scorers (each column records its polarity). Anand, Tan & Minakova (EMNLP 2023) protocol: EL2N
and GraNd at an early epoch of every scoring seed (Paul et al. 2021), VoG and TracIn over N_c checkpoints of one run,
forgetting/AUM/cartography from the training dynamics, PVI against a null model, and LESS-style gradient cosine with a
held-out target set. The fields of `ScoringPlan` are also the recipe's flags (`RecipeParser`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.utils import logging

from ..data import EXAMPLE_ID_COLUMN
from .text_classification import DataArguments, encoder_config, load_model, make_optimizer, tokenize_splits

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class ScoreSpec:
    """How the recipe obtains one score column and prunes with it.

    Attributes:
        name: the recipe's score name (also the dataset column).
        source: `"store"` (a SignalStore summary statistic of the scoring runs, averaged over seeds),
            `"checkpoint"` (a registered Scorer evaluated at the early checkpoint of every scoring seed, averaged),
            `"trajectory"` (a registered Scorer over the N_c checkpoints of the first scoring seed), `"null"` (PVI:
            the final checkpoints of the scoring runs against a run fine-tuned on empty inputs).
        default_strategy: the `select_by_score` strategy used unless `--selections` says otherwise (read with the
            column's polarity, which the scorer records). Scores measured on the SNLI pruning curve (recipes/README.md
            "The pruning curve") default to what beat same-size random there, keeping the easiest examples within
            each class (the data-scarce regime of Sorscher et al. 2022; keeping the hardest by EL2N lost 13-15 points);
            the others keep the paper's strategy.
        description: how the column is made.
        default_class_balanced: whether the default selection is class-balanced (gradient cosine: its mean over a
            mixed-label target ranks whole classes first; class-balanced, it beat class-balanced random on SNLI).
    """

    name: str
    source: str
    default_strategy: str
    description: str
    default_class_balanced: bool = False

    @property
    def default_selection(self) -> str:
        """The default `"score:strategy[:balanced]"` of this score."""
        return f"{self.name}:{self.default_strategy}" + (":balanced" if self.default_class_balanced else "")


SCORES: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec("el2n", "checkpoint", "easiest",
                  "||softmax(f(x)) - onehot(y)||_2 in eval mode at the end of epoch --el2n_epoch, mean over seeds",
                  default_class_balanced=True),
        ScoreSpec("grand", "checkpoint", "hardest",
                  "per-example loss-gradient L2 norm at the same early checkpoint, mean over seeds"),
        ScoreSpec("loss", "checkpoint", "hardest",
                  "cross-entropy of the gold label at the end of the scoring run, mean over seeds"),
        ScoreSpec("forgetting", "store", "easiest",
                  "forgetting events (Toneva et al. 2019); dense evaluation every --dense_eval_steps steps",
                  default_class_balanced=True),
        ScoreSpec("aum", "store", "easiest",
                  "area under the margin (Pleiss et al. 2020) over training updates", default_class_balanced=True),
        ScoreSpec("confidence", "store", "hardest",
                  "dataset-cartography confidence: mean gold probability over epochs"),
        ScoreSpec("variability", "store", "hardest",
                  "dataset-cartography variability: std of the gold probability over epochs"),
        ScoreSpec("vog_class", "trajectory", "easiest",
                  "VoG over N_c checkpoints of one run, z-scored within the gold class", default_class_balanced=True),
        ScoreSpec("vog_dataset", "trajectory", "weighted",
                  "VoG over N_c checkpoints of one run, z-scored over the whole dataset"),
        ScoreSpec("tracin", "trajectory", "easiest",
                  "TracIn self-influence summed over the N_c checkpoints of one run", default_class_balanced=True),
        ScoreSpec("grad_cosine", "trajectory", "highest",
                  "mean (--similarity_reduce) gradient cosine with --target_samples held-out validation pairs, "
                  "summed over the N_c checkpoints of one run (LESS-style targeted selection); keep the most similar",
                  default_class_balanced=True),
        ScoreSpec("pvi", "null", "hardest",
                  "pointwise V-information (bits): log2 p(y|x) at the end of epoch --pvi_epoch of every scoring run "
                  "(mean over seeds) minus log2 p(y|empty pair) of a model fine-tuned --pvi_epoch epochs on empty "
                  "inputs"),
    )
}


@dataclass
class ScoringPlan:
    """What to score and how: the scoring runs and the scorers' options (also the recipe's flags)."""

    scores: list[str] = field(
        default_factory=lambda: ["el2n", "aum"],
        metadata={"help": f"Scores to compute and prune with. Valid: {', '.join(SCORES)}. The default: EL2N, whose "
                  "class-balanced keep-easiest beat random on the SNLI pruning curve with 2 and with 4 fine-tuning "
                  "epochs, and AUM (keep-easiest too), which the scoring runs give for free."},
    )
    scoring_seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "Seeds of the scoring runs (scores are averaged over them)."}
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

    def __post_init__(self) -> None:
        for name in ("scores", "scoring_seeds"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, [])
            elif isinstance(value, (str, int)):
                setattr(self, name, [value])
        self.scoring_seeds = [int(s) for s in self.scoring_seeds]
        unknown = [s for s in self.scores if s not in SCORES]
        if unknown:
            raise ValueError(f"Unknown score(s) {unknown}; valid scores are: {', '.join(SCORES)}.")
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
        from ..grads.similarity import SIMILARITY_REDUCTIONS

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

    def tracin_steps(self) -> list[int]:
        """The steps of TracIn's own checkpoints (empty: TracIn uses the evenly spaced trajectory)."""
        every = self.tracin_checkpoint_every
        return [every * (i + 1) for i in range(self.num_score_checkpoints)] if every else []

    def check_epochs(self, scoring_epochs: float) -> None:
        """Refuse EL2N/GraNd/PVI epochs after the end of the scoring runs (before any training)."""
        if "pvi" in self.scores and self.pvi_epoch > scoring_epochs:
            raise ValueError(f"--pvi_epoch {self.pvi_epoch} is after the end of the scoring runs ({scoring_epochs} "
                             "epochs); lower --pvi_epoch or raise --scoring_num_train_epochs.")
        if {"el2n", "grand"} & set(self.scores) and self.el2n_epoch > scoring_epochs:
            raise ValueError(f"--el2n_epoch {self.el2n_epoch} is after the end of the scoring runs ({scoring_epochs} "
                             "epochs); lower --el2n_epoch or raise --scoring_num_train_epochs.")


@dataclass
class ScoringContext:
    """What the scoring runs share: the model to start from, its tokenizer and collator, the training arguments
    (a `ScoringConfig`: dense evaluations for forgetting), the data options, and the grad_cosine target pairs."""

    model_path: str
    config: Any
    tokenizer: Any
    collator: Any
    training_args: Any
    data_args: DataArguments
    head_learning_rate: float | None = None
    target: Any = None


@dataclass
class ScoredSplit:
    """A scored training split and how it was scored (for its dataset card)."""

    dataset: Any
    entries: list[dict[str, Any]]
    checkpoints: list[str]
    summary: Any = None
    stability: Any = None


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


def run_scoring_training(seed: int, first: bool, train, plan: ScoringPlan, ctx: ScoringContext, output_dir: Path,
                         run_name: str | None = None) -> ScoringRun:
    """Fine-tune one scoring run with ScoringTrainer (signals recorded) and save the checkpoints the scorers need."""
    from ..trainer import ScoringTrainer

    needs = scoring_needs(plan.scores, tracin_own_checkpoints=bool(plan.tracin_checkpoint_every),
                          grand_at_initialization=plan.grand_at_initialization)
    run_dir = output_dir / "scoring" / (run_name or f"seed_{seed}")
    epochs = plan.scoring_num_train_epochs or ctx.training_args.num_train_epochs
    args = dataclasses.replace(
        ctx.training_args,
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
        overwrite_signals=True,  # scoring again means training again: the run's old signals are replaced
    )
    schedule = CheckpointSchedule(
        num_evenly_spaced=plan.num_score_checkpoints if (first and needs["evenly_spaced"]) else 0,
        epochs=([plan.el2n_epoch] if needs["early"] else []) + ([plan.pvi_epoch] if needs["null"] else []),
        final=needs["final"],
        fixed_steps=plan.tracin_steps() if (first and "tracin" in plan.scores) else (),
    )
    model = load_model(ctx.model_path, ctx.config, ctx.tokenizer, seed, quiet=not first)
    trainer = ScoringTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=ctx.collator,
        processing_class=ctx.tokenizer,
        callbacks=[schedule],
        optimizers=(make_optimizer(model, args, ctx.head_learning_rate), None),
    )
    trainer.train()
    early = run_dir / f"checkpoint-{schedule.epoch_steps[plan.el2n_epoch]}" if needs["early"] else None
    pvi = run_dir / f"checkpoint-{schedule.epoch_steps[plan.pvi_epoch]}" if needs["null"] else None
    final = run_dir / f"checkpoint-{schedule.max_steps}" if needs["final"] else None
    trajectory = [run_dir / f"checkpoint-{step}" for step in schedule.steps]
    if first and needs["evenly_spaced"] and len(trajectory) < plan.num_score_checkpoints:
        logger.warning(
            f"The scoring run has only {schedule.max_steps} steps, so {len(trajectory)} distinct checkpoints were "
            f"saved instead of --num_score_checkpoints={plan.num_score_checkpoints}."
        )
    tracin = [run_dir / f"checkpoint-{step}" for step in schedule.fixed_steps]
    return ScoringRun(seed, run_dir, trainer.signal_store, early, final, trajectory, pvi, tracin)


def run_null_training(train, plan: ScoringPlan, ctx: ScoringContext, output_dir: Path) -> ScoringRun:
    """PVI's null model: the first scoring run's recipe, for ``--pvi_epoch`` epochs, on the same rows with every pair
    emptied (`hf_influence.scorers.pvi.make_null_input_dataset`, Ethayarajh et al. 2022) and tokenized as the real
    split is (e.g. `[CLS] [SEP] [SEP]`)."""
    from ..batching import TOKEN_COLUMNS
    from ..scorers.pvi import make_null_input_dataset

    text = train.remove_columns([c for c in TOKEN_COLUMNS if c in train.column_names])
    data_args = ctx.data_args
    emptied = make_null_input_dataset(text, [data_args.premise_column, data_args.hypothesis_column])
    null_train = tokenize_splits({"null (PVI)": emptied}, ctx.tokenizer, data_args,
                                 ctx.training_args.main_process_first)["null (PVI)"]
    seed = plan.scoring_seeds[0]
    # only the final checkpoint, after --pvi_epoch epochs
    null_plan = dataclasses.replace(plan, scores=["loss"], scoring_num_train_epochs=plan.pvi_epoch)
    run = run_scoring_training(seed, False, null_train, null_plan, ctx, output_dir, run_name=f"null_seed_{seed}")
    first = null_train[0]
    run.null_input = {c: list(first[c]) for c in TOKEN_COLUMNS if c in null_train.column_names}
    return run


def attach_scores(train, runs: list[ScoringRun], plan: ScoringPlan, ctx: ScoringContext,
                  null_run: ScoringRun | None = None, features_dir: Path | None = None) -> ScoredSplit:
    """Add one float32 column per requested score to the tokenised training set (call it on every process of a job:
    the scorers split the rows over the processes and gather the columns).

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
        `ScoredSplit`: the scored dataset, the card entries of the score columns, the scoring checkpoints, the
        combined SignalStore summary (or None) and the Spearman stability of the store scores over seeds (or None).
    """
    from ..normalization import add_normalized_column
    from ..scorers import get_scorer

    scores = plan.scores
    tokenizer, config, model_path = ctx.tokenizer, ctx.config, ctx.model_path
    common = {"batch_size": plan.scoring_batch_size, "label_column": ctx.data_args.label_column,
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
        if plan.grand_at_initialization:
            at_init = [load_model(model_path, config, tokenizer, seed, quiet=True)
                       for seed in plan.scoring_seeds]
            add(get_scorer("grand", model=at_init, **common))
            entries[-1]["definition"] += ", at initialisation (the pretrained encoder, each scoring seed's fresh head)"
            entries[-1]["config"]["initialization_seeds"] = list(plan.scoring_seeds)
            # Kirsch's baseline: GraNd at init that merely follows the input norm (the seeds share the embeddings)
            add(get_scorer("input_norm", model=at_init[0], **common))
        else:
            add(get_scorer("grand", model=early, **common))
    if "loss" in scores:
        add(get_scorer("loss", model=final, **common))
    summary = stability = None
    store_scores = [s for s in scores if SCORES[s].source == "store"]
    if store_scores:
        from ..store import SignalStore

        summary, stability = SignalStore.combine([run.store for run in runs])
        add(get_scorer("dynamics", store_or_summary=summary, columns=store_scores))
    vog = [s for s in scores if s.startswith("vog_")]
    if vog:
        vog_scorer = get_scorer("vog", model=trajectory, reduce=plan.vog_reduce, normalization=None, **common)
        add(vog_scorer)
        raw = vog_scorer.card_entry()
        for name in vog:
            by = name.split("_", 1)[1]
            scored = add_normalized_column(scored, raw["column"], by=by, label_column=ctx.data_args.label_column,
                                           output_column=name)
            where = "within the gold class" if by == "class" else "over the dataset"
            definition = f"{raw['definition']}, z-scored {where}"
            entries.append({**raw, "name": name, "column": name, "definition": definition,
                            "config": {**raw["config"], "normalization": by}})
    if "tracin" in scores:
        params = plan.tracin_params
        if params == "last_layer":
            params = rf"\.layer\.{encoder_config(config).num_hidden_layers - 1}\."
        add(get_scorer("tracin", model=tracin_own or trajectory, learning_rates=1.0,
                       params=None if params == "all" else params, **common))
    if "grad_cosine" in scores:
        add(grad_cosine_scorer(train, ctx.target, trajectory, plan, ctx, features_dir))
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
    return ScoredSplit(scored, entries, checkpoints, summary, stability)


def grad_cosine_scorer(train, target, trajectory: list[Path], plan: ScoringPlan, ctx: ScoringContext,
                       features_dir: Path):
    """The ``grad_cosine`` scorer: projected gradients of ``train`` and ``target`` at every trajectory checkpoint
    (resumable folders ``features_dir/{train,target}_<c>``), compared by cosine."""
    from ..grads import GradientProjector, write_projected_gradients
    from ..scorers import get_scorer, load_checkpoint

    if target is None or not len(target):
        raise ValueError("grad_cosine needs target pairs (the first --target_samples validation pairs).")
    size = plan.similarity_projection
    folders: dict[str, list[Path]] = {"train": [], "target": []}
    for index, checkpoint in enumerate(trajectory):
        model = load_checkpoint(checkpoint, task="sequence_classification")
        projector = GradientProjector(model, k_in=size, k_out=size, seed=0)
        for name, data in (("train", train), ("target", target)):
            folders[name].append(write_projected_gradients(
                model, data, features_dir / f"{name}_{index}", projector=projector,
                batch_size=plan.scoring_batch_size, tokenizer=ctx.tokenizer,
                label_column=ctx.data_args.label_column))
    return get_scorer("gradient_similarity", train_features=folders["train"], query_features=folders["target"],
                      normalize=True, reduce=plan.similarity_reduce, column="grad_cosine")


def score_split(train, plan: ScoringPlan, ctx: ScoringContext, output_dir: Path) -> ScoredSplit:
    """Train the scoring runs and attach every score of `plan` to `train` (in `output_dir/scoring`).

    Every process takes part in every step: the scoring runs train data-parallel (DDP when launched so) and the
    scorers split the rows over the processes and gather the columns (`hf_influence.scorers.sharding`), so every rank
    returns the same scored split and none waits for another to score.
    """
    from accelerate import PartialState

    plan.check_epochs(plan.scoring_num_train_epochs or ctx.training_args.num_train_epochs)
    if not plan.scores:
        return ScoredSplit(train, [], [])
    runs = [run_scoring_training(seed, index == 0, train, plan, ctx, output_dir)
            for index, seed in enumerate(plan.scoring_seeds)]
    null_run = run_null_training(train, plan, ctx, output_dir) if scoring_needs(plan.scores)["null"] else None
    PartialState().wait_for_everyone()  # every checkpoint is on disk before any rank loads one
    return attach_scores(train, runs, plan, ctx, null_run, features_dir=output_dir / "scoring" / "gradient_features")


def attach_saved_scores(train, path: str | Path) -> ScoredSplit:
    """Join the score columns of a scored split saved by `save_scored_dataset` onto `train` by example id (to prune
    again without re-scoring). Each column keeps its polarity (from its feature, else from `hf_influence.json`)."""
    import json

    import datasets

    from ..hub import PROVENANCE_FILENAME
    from ..polarity import get_polarity, polarities_from_provenance, score_feature

    path = Path(path)
    provenance_file = path / PROVENANCE_FILENAME
    if not provenance_file.is_file():
        raise FileNotFoundError(f"{path} is not a scored dataset saved by save_scored_dataset (no "
                                f"{PROVENANCE_FILENAME}). Pass the scored_dataset/ folder of an earlier run.")
    provenance = json.loads(provenance_file.read_text())
    saved = datasets.load_from_disk(str(path))
    saved = saved["train"] if isinstance(saved, datasets.DatasetDict) else saved
    entries = provenance.get("scores", [])
    polarities = polarities_from_provenance(provenance)
    position = {int(i): k for k, i in enumerate(saved[EXAMPLE_ID_COLUMN])}
    ids = [int(i) for i in train[EXAMPLE_ID_COLUMN]]
    missing = [i for i in ids if i not in position]
    if missing:
        raise ValueError(f"{len(missing)} training example ids (e.g. {missing[:5]}) have no scores in {path}: it was "
                         "scored on other rows. Use the same data options (--max_train_samples, --subset_seed, ...).")
    rows = [position[i] for i in ids]
    for entry in entries:
        column = entry["column"]
        if column in train.column_names:
            train = train.remove_columns(column)
        polarity = get_polarity(saved, column) or polarities.get(column)
        values = np.asarray(saved[column], dtype=np.float32)[rows]
        train = train.add_column(column, values, feature=score_feature(polarity))
    return ScoredSplit(train, entries, list(provenance.get("checkpoints", [])))  # {"ref", "fingerprint"} entries


def saved_scoring_matches(path: str | Path, record: dict[str, Any]) -> bool:
    """Whether the scored split saved in `path` was scored with the settings `record` (its card's `extra`): then a
    rerun of the same command prunes it again instead of re-scoring."""
    import json

    from ..hub import PROVENANCE_FILENAME

    provenance_file = Path(path) / PROVENANCE_FILENAME
    if not provenance_file.is_file():
        return False
    extra = json.loads(provenance_file.read_text()).get("extra") or {}
    wanted = json.loads(json.dumps(record, default=str))
    return all(extra.get(key) == value for key, value in wanted.items())
