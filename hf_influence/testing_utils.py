"""Helpers for the tests and benchmarks, not part of the user API: counting the aten ops a call dispatches, a
hardware-independent measure of kernel launches and host syncs.

On a GPU each compute (non-view) op is at least one kernel launch, and an op whose result the host must read (`item`,
`nonzero`, boolean indexing, `unique`) stalls the launch queue until the device catches up. Where a step is
launch-bound, these counts explain time ratios that a CPU timing cannot show. The benchmarks and the tests use them
(e.g. "the norms-only hook math adds no host sync"); they work on any device, including CPU.

Example:

```python
>>> from hf_influence.testing_utils import count_ops
>>> compute, syncs = count_ops(lambda: model(**batch).loss.backward())
```
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from torch.utils._python_dispatch import TorchDispatchMode

#: Ops that only reinterpret a tensor's metadata (no kernel on any device).
VIEW_OPS = frozenset({
    "view", "t", "transpose", "detach", "slice", "select", "expand", "unsqueeze", "squeeze", "reshape",
    "_unsafe_view", "_reshape_alias", "as_strided", "alias", "permute", "split", "unbind", "lift_fresh",
})
#: Ops whose result the host must read before it can go on (a device-to-host copy: a sync on a GPU).
SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select", "is_nonzero",
    "item",
})


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the `with` block.

    Attributes:
        compute (`int`): ops that are not views (each at least one kernel launch on a GPU).
        sync (`int`): ops in `sync_ops` (by default `SYNC_OPS`, those that make the host wait for the device).
        by_name (`collections.Counter`): every dispatched op by its overload-packet name, views included.
    """

    def __init__(self, sync_ops: Iterable[str] = SYNC_OPS) -> None:
        super().__init__()
        self.sync_ops = frozenset(sync_ops)
        self.compute = self.sync = 0
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.by_name[name] += 1
        self.compute += name not in VIEW_OPS
        self.sync += name in self.sync_ops
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object], sync_ops: Iterable[str] = SYNC_OPS) -> tuple[int, int]:
    """`(compute ops, sync ops)` dispatched by one call of `fn` (see `OpCounter`)."""
    with OpCounter(sync_ops) as counter:
        fn()
    return counter.compute, counter.sync
