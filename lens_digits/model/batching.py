"""Batches of equal token length: no padding, so a batch gives exactly what each sequence gives alone.

One helper for every place that runs the model on many sequences (residual
collection, greedy decoding), so that they group sequences the same way: by
the length of what is actually fed.
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``lengths`` grouped by equal length (shortest first), in chunks of at most ``batch_size``.

    The order is deterministic: by length, then by index.

    Raises:
        ValueError: ``batch_size`` is less than 1.

    >>> list(length_batches([3, 2, 3, 3, 2], batch_size=2))
    [[1, 4], [0, 2], [3]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        by_len[n].append(i)
    for n in sorted(by_len):
        idx = by_len[n]
        for start in range(0, len(idx), batch_size):
            yield idx[start : start + batch_size]
