"""The order contract of training batches: which groups form global batch ``step`` of ``epoch``.

Pure functions of ``(N, B, seed, epoch)`` (and the groups' lengths when batches are length-aware),
so every process, a resumed run and a run with another process count compute the same batches.
:mod:`pile_jax.data.loader` reads and prefetches the records in this order.

Order of epoch ``e`` (:func:`epoch_batches`):

1. ``perm = np.random.default_rng([seed, e]).permutation(N)`` (``arange(N)`` when
   ``shuffle=False``);
2. ``drop_remainder=True`` keeps the first ``S * B`` entries, ``S = N // B`` (the ``N mod B``
   groups left out differ from epoch to epoch); ``drop_remainder=False`` pads ``perm`` with
   ``PAD_INDEX`` (-1) to ``S * B``, ``S = ceil(N / B)`` (static shapes for ``jit``; a padding
   row is all-masked);
3. without lengths: global batch ``s`` is ``perm[s*B:(s+1)*B]``;
   length-aware (``lengths[N]`` given): ``perm`` is cut into windows of ``window * B`` entries,
   each window is sorted by group length (stable; padding last), cut into batches of ``B``, and
   the ``S`` batches of the epoch are put in the order
   ``np.random.default_rng([seed, e, 1]).permutation(S)`` (kept when ``shuffle=False``).
   Each batch then holds groups of similar length, so it pads to a short length bucket; every
   group is still seen once per epoch (under ``drop_remainder=True``: every group that step 2
   kept), and the batch sequence stays a deterministic function of the seed;
4. process ``p`` of ``P`` takes the contiguous slice ``[p*B/P, (p+1)*B/P)`` of every global
   batch (:func:`process_slice`): the processes' slices are disjoint and their concatenation in
   process order is the global batch, whatever ``P`` is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "PAD_INDEX",
    "check_batching",
    "steps_per_epoch",
    "epoch_batches",
    "process_slice",
    "stack_records",
    "padding_record",
]

PAD_INDEX = -1


def check_batching(num_examples: int, global_batch_size: int, *, seed: int, process_index: int = 0,
                   process_count: int = 1, drop_remainder: bool = True) -> None:
    """Raise ``ValueError`` naming the argument when the batching cannot work."""
    for name, value in (("num_examples", num_examples), ("global_batch_size", global_batch_size),
                        ("process_count", process_count)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index!r} not in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}")
    if drop_remainder and num_examples < global_batch_size:
        raise ValueError(
            f"num_examples {num_examples} < global_batch_size {global_batch_size} with "
            "drop_remainder=True: an epoch would have no batch")


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_remainder: bool = True) -> int:
    """Global batches per epoch: ``N // B``, or ``ceil(N / B)`` without ``drop_remainder``."""
    if drop_remainder:
        return int(num_examples) // int(global_batch_size)
    return -(-int(num_examples) // int(global_batch_size))


def epoch_batches(
    num_examples: int,
    global_batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    lengths: np.ndarray | None = None,
    window: int = 16,
) -> np.ndarray:
    """All global batches of ``epoch`` in order: int64 ``[S, B]`` of group indices, ``PAD_INDEX``
    for padding (see the module docstring for the contract). ``lengths`` (int ``[N]``, e.g. the
    padded token length each group needs) makes the batches length-aware with windows of
    ``window * B`` groups; ``window=1`` only shuffles the batch order."""
    N, B = int(num_examples), int(global_batch_size)
    S = steps_per_epoch(N, B, drop_remainder)
    if shuffle:
        perm = np.random.default_rng([int(seed), int(epoch)]).permutation(N).astype(np.int64)
    else:
        perm = np.arange(N, dtype=np.int64)
    if len(perm) >= S * B:
        perm = perm[:S * B]
    else:
        perm = np.concatenate([perm, np.full(S * B - len(perm), PAD_INDEX, np.int64)])
    if lengths is None:
        return perm.reshape(S, B)
    lengths = np.asarray(lengths)
    if lengths.shape != (N,):
        raise ValueError(f"lengths has shape {lengths.shape}, expected ({N},) (one per group)")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive int (batches per length window), got {window!r}")
    # Padding sorts after every real group (key = max + 1), so it stays in one batch of the window.
    key = np.where(perm >= 0, lengths[np.maximum(perm, 0)], lengths.max(initial=0) + 1)
    span = int(window) * B
    for start in range(0, len(perm), span):
        order = np.argsort(key[start:start + span], kind="stable")
        perm[start:start + span] = perm[start:start + span][order]
    batches = perm.reshape(S, B)
    if shuffle:
        batches = batches[np.random.default_rng([int(seed), int(epoch), 1]).permutation(S)]
    return batches


def process_slice(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Process ``p``'s contiguous ``B/P`` entries of a global batch (the last axis)."""
    b = global_batch.shape[-1] // process_count
    return global_batch[..., process_index * b:(process_index + 1) * b]


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def padding_record(record: Mapping[str, Any]) -> dict:
    """A record shaped like ``record`` with zeros / False / empty strings (``mask`` all False)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, (bytes, str)):
            out[key] = ""
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
            out[key] = [""] * len(value)
        else:
            out[key] = np.zeros_like(np.asarray(value))
    return out


def stack_records(records: Sequence[Mapping[str, Any]]) -> dict:
    """Default collate: stack each field; bytes become str; lists of strings become np.str_ arrays;
    a scalar string field becomes a list of str."""
    out: dict[str, Any] = {}
    for key in records[0]:
        values = [r[key] for r in records]
        first = values[0]
        if isinstance(first, (bytes, str)):
            out[key] = [_as_str(v) for v in values]
        elif isinstance(first, (list, tuple)) and (not first or isinstance(first[0], (bytes, str))):
            out[key] = np.array([[_as_str(s) for s in v] for v in values], dtype=np.str_)
        else:
            out[key] = np.stack([np.asarray(v) for v in values])
    return out
