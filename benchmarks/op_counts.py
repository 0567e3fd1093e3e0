"""Counting the aten ops a call dispatches: a hardware-independent measure of kernel launches and host syncs.

On a GPU each compute (non-view) op is at least one kernel launch, and an op whose result the host must read (`item`,
`nonzero`, boolean indexing, `unique`) stalls the launch queue. Where a step is launch-bound, these counts explain
time ratios that a CPU timing cannot show.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode

VIEW_OPS = {"view", "t", "transpose", "detach", "slice", "select", "expand", "unsqueeze", "squeeze", "reshape",
            "_unsafe_view", "_reshape_alias", "as_strided", "alias", "permute", "split", "unbind", "lift_fresh"}
SYNC_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
            "is_nonzero", "item"}


class OpCounter(TorchDispatchMode):
    """Counts the compute (non-view) aten ops dispatched inside the `with` block, and those that sync with the host."""

    def __init__(self) -> None:
        super().__init__()
        self.compute = self.sync = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.compute += name not in VIEW_OPS
        self.sync += name in SYNC_OPS
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable) -> tuple[int, int]:
    """`(compute ops, sync ops)` dispatched by one call of `fn`."""
    with OpCounter() as counter:
        fn()
    return counter.compute, counter.sync
