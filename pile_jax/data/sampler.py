"""Deterministic, resumable, process-sharded sampling of example indices, and a batch loader.

Order contract (what makes a resumed or multi-host run see the same data):

* epoch ``e`` uses the permutation ``np.random.default_rng([seed, e]).permutation(N)``
  (``arange(N)`` when ``shuffle=False``);
* it is cut into consecutive global batches of ``global_batch_size`` indices;
* process ``p`` of ``P`` takes the contiguous slice ``[p * B/P, (p + 1) * B/P)`` of every global
  batch, so the processes' slices are disjoint and their concatenation (in process order) is
  the global batch;
* the position is ``(epoch, step_in_epoch)``; ``state_dict`` / ``load_state_dict`` restore it, so a
  resumed sampler yields exactly what an uninterrupted one would have.

``drop_remainder=True`` drops the last ``N mod B`` indices of each epoch's permutation (a
different set each epoch). With ``drop_remainder=False`` the last global batch is padded to
full size with ``-1`` (static shapes for ``jit``); :class:`BatchLoader` turns ``-1`` into an
all-padding row.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["EpochSampler", "BatchLoader", "stack_records", "PAD_INDEX"]

PAD_INDEX = -1


class EpochSampler:
    """Yields this process's indices of each global batch, epoch after epoch (forever)."""

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        drop_remainder: bool = True,
    ):
        for name, value in (("num_examples", num_examples), ("global_batch_size", global_batch_size),
                            ("process_count", process_count)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}"
            )
        if drop_remainder and num_examples < global_batch_size:
            raise ValueError(
                f"num_examples {num_examples} < global_batch_size {global_batch_size} with "
                "drop_remainder=True: an epoch would have no batch"
            )
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.per_process_batch_size = self.global_batch_size // int(process_count)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.epoch = 0
        self.step_in_epoch = 0
        self._cached_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return -(-self.num_examples // self.global_batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global index order of ``epoch`` (int64 [N])."""
        if self.shuffle:
            return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)
        return np.arange(self.num_examples, dtype=np.int64)

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """All ``global_batch_size`` indices of batch ``step`` of ``epoch`` (``-1`` = padding)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} not in [0, {self.steps_per_epoch})")
        if self._cached_epoch != epoch:
            self._order, self._cached_epoch = self.epoch_order(epoch), epoch
        B = self.global_batch_size
        batch = self._order[step * B:(step + 1) * B].astype(np.int64)
        if len(batch) < B:
            batch = np.concatenate([batch, np.full(B - len(batch), PAD_INDEX, np.int64)])
        return batch

    def next_indices(self) -> np.ndarray:
        """This process's ``global_batch_size // process_count`` indices of the next batch."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        batch = self.global_batch(self.epoch, self.step_in_epoch)
        self.step_in_epoch += 1
        b = self.per_process_batch_size
        return batch[self.process_index * b:(self.process_index + 1) * b]

    def __iter__(self):
        while True:
            yield self.next_indices()

    def state_dict(self) -> dict[str, int]:
        """The position of the next batch: ``{"epoch": int, "step_in_epoch": int}``."""
        return {"epoch": int(self.epoch), "step_in_epoch": int(self.step_in_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` (same N, batch size and seed assumed)."""
        if set(state) != {"epoch", "step_in_epoch"}:
            raise ValueError(f"sampler state must have keys epoch, step_in_epoch; got {sorted(state)}")
        epoch, step = int(np.asarray(state["epoch"])), int(np.asarray(state["step_in_epoch"]))
        if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
            raise ValueError(
                f"invalid sampler state epoch={epoch} step_in_epoch={step} "
                f"(steps_per_epoch={self.steps_per_epoch})"
            )
        self.epoch, self.step_in_epoch = epoch, step


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _padding_record(record: Mapping[str, Any]) -> dict:
    """A record shaped like ``record`` with zeros / False / empty strings."""
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


class BatchLoader:
    """Turns the sampler's indices into batches read from a random-access ``source``.

    ``source`` supports ``len`` and ``source[i]`` (and ``source.__getitems__(list)`` is used when
    present), e.g. ``builder.as_data_source()["train"]``. Padding indices (``-1``) become records
    of zeros / False / "" (so ``mask`` is False for the whole row). ``collate_fn`` maps the list of
    records to the batch (default :func:`stack_records`).
    """

    def __init__(self, source, sampler: EpochSampler, collate_fn: Callable | None = None):
        if len(source) != sampler.num_examples:
            raise ValueError(f"source has {len(source)} examples, sampler expects {sampler.num_examples}")
        self.source = source
        self.sampler = sampler
        self.collate_fn = collate_fn or stack_records

    def _read(self, indices: list[int]) -> list:
        if hasattr(self.source, "__getitems__"):
            return list(self.source.__getitems__(indices))
        return [self.source[i] for i in indices]

    def next_batch(self) -> dict:
        indices = [int(i) for i in self.sampler.next_indices()]
        real = [i for i in indices if i != PAD_INDEX]
        records = dict(zip(real, self._read(real))) if real else {}
        if len(real) < len(indices):
            template = records[real[0]] if real else self.source[0]
            pad = _padding_record(template)
            return self.collate_fn([records[i] if i != PAD_INDEX else pad for i in indices])
        return self.collate_fn([records[i] for i in indices])

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)
