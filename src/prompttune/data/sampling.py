"""Few-shot sampling, stratified dev splits and length-bucketed batching; all deterministic for a seed."""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import ConfigError, DataError
from .files import Row


def row_labels(rows: Sequence[Row]) -> list[str | None]:
    """Every row's label (None where it has none); a :class:`~prompttune.data.DatasetRows` reads its label column alone."""
    labels = getattr(rows, "labels", None)
    return labels() if callable(labels) else [row.get("label") for row in rows]


def _by_label(labels: Sequence[str | None], what: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label is None:
            raise DataError(f"{what} needs labelled rows but row {i + 1} has no label", where=what,
                            fix="use labelled data (require_label=True)")
        groups.setdefault(label, []).append(i)
    return groups


def few_shot_indices(labels: Sequence[str | None], per_class: int, seed: int, *, exclude=frozenset(),
                     strict: bool = True) -> list[int]:
    """Indices of ``per_class`` rows of every label, drawn deterministically from ``seed``, in shuffled order.

    Each class is shuffled whole and its first ``per_class`` indices not in ``exclude`` are taken, so a dev sample
    drawn with ``exclude=`` the train sample's indices never repeats a training row, and is the same sample as without
    ``exclude`` whenever the two did not meet. For one seed, the sample for a larger ``per_class`` contains the one for
    a smaller. A class with fewer rows (left) is an error, or with ``strict=False`` gives what it has.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be a positive integer, got {per_class!r}", where="few_shot",
                          fix="use e.g. per_class=16")
    groups = _by_label(labels, "few_shot")
    left = {label: sum(i not in exclude for i in ix) for label, ix in groups.items()}
    short = {label: n for label, n in left.items() if n < per_class}
    if short and strict:
        detail = ", ".join(f"class {label!r} has only {n}" for label, n in sorted(short.items()))
        rest = " left after the training sample" if exclude else ""
        raise DataError(f"cannot draw {per_class} examples per class: {detail}{rest}", where="few_shot",
                        fix=f"lower per_class to at most {min(short.values())}, or add examples")
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(groups):
        ix = list(groups[label])
        rng.shuffle(ix)
        chosen.extend([i for i in ix if i not in exclude][:per_class])
    random.Random(f"few_shot-order-{seed}").shuffle(chosen)
    return chosen


def few_shot(rows: Sequence[Row], per_class: int, seed: int) -> list[Row]:
    """``per_class`` rows of every label, drawn deterministically from ``seed``, in shuffled order (copies).

    For one seed, the sample for a larger ``per_class`` contains the one for a smaller.
    """
    return [dict(rows[i]) for i in few_shot_indices(row_labels(rows), per_class, seed)]


def split_dev(rows: Sequence[Row], *, per_class: int | None = None, fraction: float = 0.25,
              seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Split labelled rows into (train, dev), stratified by label; deterministic for a seed.

    Each class gives ``per_class`` rows (or ``round(fraction * n)``) to dev, but a class with at
    least 2 rows always keeps at least one row on each side; a class with one row stays in train.
    Both halves keep the input order.
    """
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int)
                                  or per_class < 1):
        raise ConfigError(f"per_class must be a positive integer or None, got {per_class!r}",
                          where="split_dev", fix="use e.g. per_class=8, or fraction=0.25")
    if per_class is None and not (0.0 < fraction < 1.0):
        raise ConfigError(f"fraction must be between 0 and 1, got {fraction!r}", where="split_dev",
                          fix="use e.g. fraction=0.25")
    groups = _by_label(row_labels(rows), "split_dev")
    rng = random.Random(seed)
    dev_ix: set[int] = set()
    for label in sorted(groups):
        ix = list(groups[label])
        n = len(ix)
        want = per_class if per_class is not None else int(fraction * n + 0.5)
        take = max(1, min(n - 1, want)) if n >= 2 else 0
        rng.shuffle(ix)
        dev_ix.update(ix[:take])
    train = [dict(r) for i, r in enumerate(rows) if i not in dev_ix]
    dev = [dict(r) for i, r in enumerate(rows) if i in dev_ix]
    return train, dev


def length_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                   bucket_factor: int = 50) -> list[list[int]]:
    """Batches of indices into ``lengths``; every index appears exactly once.

    ``shuffle=False`` (evaluation): all indices sorted by length, longest first, then cut.
    ``shuffle=True`` (training): indices shuffled with ``seed``, cut into chunks of
    ``batch_size * bucket_factor``, each chunk sorted by length and cut into batches, and the
    batch order shuffled (seeded), so batches hold similar lengths (little padding) yet vary.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}",
                          where="batch_size", fix="use e.g. batch_size=8")
    if isinstance(bucket_factor, bool) or not isinstance(bucket_factor, int) or bucket_factor < 1:
        raise ConfigError(f"bucket_factor must be a positive integer, got {bucket_factor!r}",
                          where="bucket_factor", fix="use e.g. bucket_factor=50")

    def by_length(ix: list[int]) -> list[int]:
        return sorted(ix, key=lambda i: -lengths[i])  # stable: ties keep their order

    def cut(ix: list[int]) -> list[list[int]]:
        return [ix[i:i + batch_size] for i in range(0, len(ix), batch_size)]

    order = list(range(len(lengths)))
    if not shuffle:
        return cut(by_length(order))
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        batches.extend(cut(by_length(order[start:start + chunk])))
    rng.shuffle(batches)
    return batches
