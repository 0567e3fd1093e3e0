"""Per-example gradient machinery: exact ghost norms (eager or replayed as CUDA graphs), input-embedding gradients and
projected gradient features and similarity queries over them.

Modules, from the bottom up: `core` (parameter selection, batches, per-example losses, eval/frozen mode), `masks`
(4-D attention masks), `layers` (one ghost-norm rule class per layer kind, and the plan assigning parameters to
them), `hooks` (the `HookEngine` that captures layer inputs and output gradients, and the frozen backward that drives
it), `norm_engine` and `projection` (its consumers: norms, projected gradients), `fallback` (`torch.func` for modules
without a rule), `hook_check` (the rules against autograd), `graphs` (CUDA graphs of a step callable), `norms`
(`PerExampleGradNorms`), `collector` (`GhostNormCollector`, norms from the training backward), `input_grads`,
`similarity` and `hvp`.
"""

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
