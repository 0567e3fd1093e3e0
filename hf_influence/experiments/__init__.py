"""Pruning experiments as a library API: score -> select -> re-fine-tune -> compare with random, with statistics.

- `PruningExperiment`: the grid (selections x kept fractions x seeds, plus random and full data), resumable.
- `ExperimentResult`: the runs, `summary()` with 95% intervals and the paired difference to random, `to_markdown()`,
  `save()`, the plot with interval bands and the best pruned model's card.
- `Selection`: one pruning method (score column + strategy + class balance).
- `statistics`: the intervals and paired tests (t-test over seeds, bootstrap over evaluation examples).
"""

from .experiment import PruningExperiment
from .results import ExperimentResult
from .selections import Selection, random_selection
from .statistics import mean_interval, paired_bootstrap, paired_t
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
