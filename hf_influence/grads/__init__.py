"""Per-example gradient machinery: exact ghost norms, input-embedding gradients and projected gradient features."""

from .core import per_example_losses, select_parameters
from .ghost import GhostNormCollector, per_example_grad_norms

__all__ = [
    "GhostNormCollector",
    "per_example_grad_norms",
    "per_example_losses",
    "select_parameters",
]
