"""Per-example gradient machinery: exact ghost norms (eager or replayed as CUDA graphs), input-embedding gradients and
projected gradient features and similarity queries over them."""

from .collector import GhostNormCollector
from .core import collate_for_gradients, per_example_losses, select_parameters
from .input_grads import input_embedding_gradients
from .norms import PerExampleGradNorms, per_example_grad_norms
from .projection import GradientProjector, load_projected_gradients, projected_gradients, write_projected_gradients
from .similarity import gradient_similarity, top_influential

__all__ = [
    "GhostNormCollector",
    "GradientProjector",
    "PerExampleGradNorms",
    "collate_for_gradients",
    "gradient_similarity",
    "input_embedding_gradients",
    "load_projected_gradients",
    "per_example_grad_norms",
    "per_example_losses",
    "projected_gradients",
    "select_parameters",
    "top_influential",
    "write_projected_gradients",
]
