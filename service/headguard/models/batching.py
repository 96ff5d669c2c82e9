"""Batches of similar length: a padded batch costs its longest input times its size, so inputs are
run shortest first and the results put back in the caller's order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def length_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `texts` in batches, by character length (a cheap stand-in for token count)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def in_input_order(batches: list[list[int]], rows: T) -> T:
    """`rows` (a tensor or array of the batches' results, concatenated) in the order of the inputs."""
    where = np.argsort(np.concatenate(batches), kind="stable") if batches else np.zeros(0, dtype=np.int64)
    return rows[where]


def map_batches(run: Callable[[list[str]], T], texts: Sequence[str], batch_size: int,
                concat: Callable[[list[T]], T]) -> T:
    """`run` on length-sorted batches of `texts`; its rows returned in the order of `texts`."""
    batches = length_batches(texts, batch_size)
    return in_input_order(batches, concat([run([texts[i] for i in b]) for b in batches]))
