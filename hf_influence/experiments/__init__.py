"""Pruning experiments as a library API: score -> select -> re-fine-tune -> compare with random, with statistics.

- `PruningExperiment`: the grid (selections x kept fractions x seeds, plus random and full data), resumable.
- `ExperimentResult`: the runs, `summary()` with 95% intervals and the paired difference to random, `to_markdown()`,
  `save()`, the plot with interval bands and the best pruned model's card.
- `Selection`: one pruning method (score column + strategy + class balance).
- The intervals and paired tests (t over seeds, bootstrap over evaluation examples): `hf_influence.statistics`.
"""

from ..statistics import mean_interval, paired_bootstrap, paired_t
from .experiment import PruningExperiment
from .results import ExperimentResult
from .selections import Selection, random_selection
from .timing import PhaseTimer

__all__ = [
    "ExperimentResult",
    "PhaseTimer",
    "PruningExperiment",
    "Selection",
    "mean_interval",
    "paired_bootstrap",
    "paired_t",
    "random_selection",
]
