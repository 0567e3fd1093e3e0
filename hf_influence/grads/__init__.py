"""Per-example gradient machinery: exact ghost norms (eager or replayed as CUDA graphs), input-embedding gradients and
projected gradient features."""

from .core import collate_for_gradients, per_example_losses, select_parameters
from .ghost import GhostNormCollector, PerExampleGradNorms, per_example_grad_norms
from .input_grads import input_embedding_gradients
from .projection import GradientProjector, load_projected_gradients, projected_gradients, write_projected_gradients

__all__ = [
    "GhostNormCollector",
    "GradientProjector",
    "PerExampleGradNorms",
    "collate_for_gradients",
    "input_embedding_gradients",
    "load_projected_gradients",
    "per_example_grad_norms",
    "per_example_losses",
    "projected_gradients",
    "select_parameters",
    "write_projected_gradients",
]
