"""Map over the leaves of nested dataclasses, dicts, lists and tuples (results and batches that cross
process boundaries)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def map_leaves(obj, fn: Callable, is_leaf: Callable[[object], bool]):
    """`obj` with every leaf (`is_leaf(x)`) replaced by `fn(leaf)`; containers without leaves come back as they are."""
    if is_leaf(obj):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            old = getattr(obj, f.name)
            new = map_leaves(old, fn, is_leaf)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, dict):
        items = {k: map_leaves(v, fn, is_leaf) for k, v in obj.items()}
        return items if any(items[k] is not obj[k] for k in obj) else obj
    if isinstance(obj, (list, tuple)):
        items = [map_leaves(v, fn, is_leaf) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)  # namedtuples too
    return obj
