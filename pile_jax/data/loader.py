"""The training loader: ranking groups -> this process's batches, prepared in background threads
(grain), length-aware, checkpointable; plus a small device-prefetch queue.

    loader = make_train_loader(source, global_batch_size=B, seed=s, process_index=p,
                               process_count=P, collate=collate)
    batch = loader.next_batch()        # this process's B/P groups, collated
    loader.state_dict()                # {"epoch", "step_in_epoch", "order"}: the next batch
    loader.load_state_dict(state)      # a resumed loader yields what an uninterrupted one would
    loader.close()

``source`` is any random-access sequence of group records (``len(source)``, ``source[i]``, and
``source.__getitems__(list)`` when present; ``__getitems__(list, epoch=e)`` for a source with
``epoch_aware = True``): the TFDS ArrayRecord split
(``builder.as_data_source()["train"]``) or a list of examples. Which groups form each batch is the
order contract of :mod:`pile_jax.data.sampler` (a pure function of seed, epoch and step); this
module reads them, runs ``collate(records) -> batch`` and keeps ``prefetch`` batches ready.

Background work runs on grain's threaded prefetch (``MapDataset.to_iter_dataset`` with
``ReadOptions``): element ``k`` of a ``MapDataset.range`` is global step ``k``, so the batches come
out in order, ``prefetch`` ahead, and an exception raised while a batch is built in a worker thread
is re-raised by ``next_batch`` in the caller's thread (with a note naming the epoch, step and
groups). Threads, not processes: see docs/architecture.md ("The training loader").

The position is the number of batches handed out (not how far the prefetch ran), so
``state_dict()`` after ``k`` calls of ``next_batch`` always resumes at batch ``k``.
"""

from __future__ import annotations

import collections
import inspect
import threading
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pile_jax.data.sampler import (
    PAD_INDEX,
    check_batching,
    epoch_batches,
    padding_record,
    process_slice,
    stack_records,
    steps_per_epoch,
)

__all__ = ["TrainLoader", "DevicePrefetch", "ColumnarSource", "make_train_loader", "read_group_lengths"]

_HORIZON = 2 ** 52  # global steps addressable from a start position (never reached)


def _read(source, indices: Sequence[int], epoch: int = 0) -> list:
    """``source``'s records ``indices``; a source with ``epoch_aware = True`` (groups drawn anew
    each epoch, :class:`pile_jax.data.table_groups.TableGroupSource`) gets ``epoch=`` too."""
    if not indices:
        return []
    if getattr(source, "epoch_aware", False):
        return list(source.__getitems__(list(indices), epoch=int(epoch)))
    if hasattr(source, "__getitems__"):
        return list(source.__getitems__(list(indices)))
    return [source[i] for i in indices]


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _takes_length(fn) -> bool:
    try:
        return "length" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def read_group_lengths(source, group_lengths: Callable, *, chunk: int = 4096) -> np.ndarray:
    """``group_lengths(query_ids [G], doc_ids [G, n]) -> int [G]`` over every record of ``source``
    (ids as ``str``, padding doc ids ``""``); returns int64 ``[len(source)]``. Reads the whole
    source once (only ``query_id`` and ``doc_ids`` are used)."""
    out = []
    for start in range(0, len(source), chunk):
        records = _read(source, range(start, min(start + chunk, len(source))))
        qids = [_as_str(r["query_id"]) for r in records]
        dids = np.array([[_as_str(d) for d in r["doc_ids"]] for r in records], dtype=np.str_)
        lengths = np.asarray(group_lengths(qids, dids))
        if lengths.shape != (len(records),) or lengths.dtype.kind not in "iu":
            raise ValueError(
                f"group_lengths returned {lengths.dtype} {lengths.shape} for {len(records)} groups; "
                "expected one integer length per group")
        out.append(lengths.astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def source_doc_ids(source, *, chunk: int = 4096) -> list[str]:
    """The distinct document ids (``str``, padding ``""`` included) of every record of ``source``,
    sorted: what a frozen document index must hold before the first batch."""
    if isinstance(source, ColumnarSource) and "doc_ids" in source.columns:
        return sorted(set(np.unique(source.columns["doc_ids"]).tolist()) | {""})
    ids: set = {""}
    for start in range(0, len(source), chunk):
        for r in _read(source, range(start, min(start + chunk, len(source)))):
            ids.update(_as_str(d) for d in r["doc_ids"])
    return sorted(ids)


class ColumnarSource:
    """A random-access source held in memory as columns (one NumPy array per field), read once.

    Decoding a TFDS ArrayRecord record costs ~0.1-0.2 ms of Python per group (its feature
    decoders), which caps a loader at ~50,000 pairs/s on one core; a batch read from columns is a
    few row views per group. ``ColumnarSource(source)`` reads every record once, in chunks of
    ``chunk`` (``source.__getitems__`` when present), decodes strings to ``str`` and stacks each
    field; ``source[i]`` / ``source.__getitems__(indices)`` then return the same records as dicts
    (``query_id`` str, ``doc_ids`` ``np.str_ [n]``, the arrays' rows). Memory: the groups' arrays
    (labels, masks, teacher scores) plus their doc ids, i.e. a few hundred bytes per group.
    """

    def __init__(self, source, *, chunk: int = 4096):
        columns: dict[str, list] = {}
        for start in range(0, len(source), chunk):
            part = stack_records(_read(source, range(start, min(start + chunk, len(source)))))
            for key, value in part.items():
                columns.setdefault(key, []).append(np.asarray(value) if not isinstance(value, list)
                                                   else np.asarray(value, dtype=np.str_))
        self.columns = {k: np.concatenate(v) for k, v in columns.items()}
        self._n = len(source)
        self._str_keys = {k for k, v in self.columns.items() if v.dtype.kind == "U" and v.ndim == 1}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        if not -self._n <= int(i) < self._n:
            raise IndexError(f"record {i} not in [0, {self._n})")
        return {k: (str(v[i]) if k in self._str_keys else v[i]) for k, v in self.columns.items()}

    def __getitems__(self, indices) -> list:
        return [self[i] for i in indices]


class TrainLoader:
    """This process's training batches, in the order of :func:`pile_jax.data.sampler.epoch_batches`,
    built and prefetched in background threads; see the module docstring. Construct with
    :func:`make_train_loader`."""

    def __init__(
        self,
        source,
        *,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        collate: Callable[[list], Any] | None = None,
        drop_remainder: bool = True,
        shuffle: bool = True,
        lengths: np.ndarray | None = None,
        window: int = 16,
        prefetch: int = 2,
        num_threads: int = 1,
    ):
        n = len(source)
        check_batching(n, global_batch_size, seed=seed, process_index=process_index,
                       process_count=process_count, drop_remainder=drop_remainder)
        for name, value, low in (("prefetch", prefetch, 0), ("num_threads", num_threads, 1), ("window", window, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
                raise ValueError(f"lengths must be int [{n}] (one per group), got {lengths.dtype} {lengths.shape}")
        self.source = source
        self.num_examples = int(n)
        self.global_batch_size = int(global_batch_size)
        self.per_process_batch_size = self.global_batch_size // int(process_count)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.drop_remainder = bool(drop_remainder)
        self.shuffle = bool(shuffle)
        self.lengths = lengths
        self.window = int(window)
        self.collate = collate or stack_records
        self._pass_length = lengths is not None and _takes_length(self.collate)
        self.prefetch = int(prefetch)
        self.num_threads = int(num_threads)
        self._position = 0            # global step of the next batch handed out
        self._it = None               # grain iterator, started lazily at _position
        self._epochs: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._order = self._fingerprint()

    # --- the order
    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        return steps_per_epoch(self.num_examples, self.global_batch_size, self.drop_remainder)

    def global_batches(self, epoch: int) -> np.ndarray:
        """int64 ``[S, B]``: every global batch of ``epoch`` (``PAD_INDEX`` = padding)."""
        with self._lock:
            if epoch not in self._epochs:
                if len(self._epochs) >= 2:
                    self._epochs.pop(min(self._epochs))
                self._epochs[epoch] = epoch_batches(
                    self.num_examples, self.global_batch_size, seed=self.seed, epoch=epoch,
                    shuffle=self.shuffle, drop_remainder=self.drop_remainder, lengths=self.lengths,
                    window=self.window)
            return self._epochs[epoch]

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        """This process's ``B / P`` group indices of global batch ``step`` of ``epoch``."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} not in [0, {self.steps_per_epoch})")
        return process_slice(self.global_batches(epoch)[step], self.process_index, self.process_count)

    def _fingerprint(self) -> str:
        """What the order depends on (not the process count: any P resumes the same order)."""
        crc = zlib.crc32(np.ascontiguousarray(self.lengths, np.int64).tobytes()) if self.lengths is not None else 0
        return (f"N={self.num_examples} B={self.global_batch_size} seed={self.seed} "
                f"shuffle={int(self.shuffle)} drop_remainder={int(self.drop_remainder)} "
                f"window={self.window if self.lengths is not None else 0} lengths_crc32={crc:08x}")

    # --- building a batch (runs in a grain worker thread when prefetch > 0)
    def _build(self, position: int):
        epoch, step = divmod(int(position), self.steps_per_epoch)
        indices = [int(i) for i in self.batch_indices(epoch, step)]
        real = [i for i in indices if i != PAD_INDEX]
        try:
            records = dict(zip(real, _read(self.source, real, epoch)))
            if len(real) < len(indices):
                pad = padding_record(records[real[0]] if real else self.source[0])
                records = [records[i] if i != PAD_INDEX else pad for i in indices]
            else:
                records = [records[i] for i in indices]
            if self._pass_length:  # the same on every process: one shape per global step
                group = self.global_batches(epoch)[step]
                length = int(self.lengths[group[group != PAD_INDEX]].max(initial=0))
                return self.collate(records, length=length)
            return self.collate(records)
        except Exception as e:
            e.add_note(f"pile_jax loader: while building batch {step} of epoch {epoch} for process "
                       f"{self.process_index} (group indices {real})")
            raise

    def _start(self):
        import grain

        ds = grain.MapDataset.range(self._position, self._position + _HORIZON).map(self._build)
        threads = self.num_threads if self.prefetch else 0
        it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self.prefetch)))
        if self.prefetch:
            it.start_prefetch()
        return it

    # --- the interface the train loop uses
    def next_batch(self):
        """The next batch of this process (epoch after epoch, forever)."""
        if self._it is None:
            self._it = self._start()
        try:
            batch = next(self._it)
        except BaseException:
            self._stop()  # a retry restarts at the same position
            raise
        self._position += 1
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch: ``{"epoch", "step_in_epoch", "order"}`` (``order``
        describes what the batch order depends on; a state with another ``order`` is refused)."""
        epoch, step = divmod(self._position, self.steps_per_epoch)
        return {"epoch": int(epoch), "step_in_epoch": int(step), "order": self._order}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at a position saved by :meth:`state_dict` (``order`` is optional, so states
        of the older sampler, ``{"epoch", "step_in_epoch"}``, load too)."""
        if not {"epoch", "step_in_epoch"} <= set(state) <= {"epoch", "step_in_epoch", "order"}:
            raise ValueError(f"loader state must have keys epoch, step_in_epoch (and order); got {sorted(state)}")
        if "order" in state and str(state["order"]) != self._order:
            raise ValueError(
                f"loader state was saved for another batch order ({state['order']}); this loader has "
                f"({self._order}). Resume with the same data, batch size, seed and length settings.")
        epoch, step = int(np.asarray(state["epoch"])), int(np.asarray(state["step_in_epoch"]))
        if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"invalid loader state epoch={epoch} step_in_epoch={step} "
                             f"(steps_per_epoch={self.steps_per_epoch})")
        self._stop()
        self._position = epoch * self.steps_per_epoch + step

    def _stop(self):
        if self._it is not None:
            self._it.close()
            self._it = None

    def close(self) -> None:
        """Stop the background threads (pending batches are dropped; the position is kept)."""
        self._stop()


def make_train_loader(
    source,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    collate: Callable[[list], Any] | None = None,
    drop_remainder: bool = True,
    shuffle: bool = True,
    length_aware: bool = True,
    lengths: np.ndarray | None = None,
    window: int = 16,
    prefetch: int = 2,
    num_threads: int = 1,
    in_memory: bool = False,
) -> TrainLoader:
    """The training loader of this process (see the module docstring).

    Length-aware batching (``length_aware=True``) needs each group's length: ``lengths`` (int
    ``[N]``) when given, else ``collate.group_lengths(query_ids, doc_ids [G, n])`` when the collate
    function has it (read once over the whole source); without either the batches are the plain
    shuffled order. ``window`` batches' worth of groups are sorted by length together (larger:
    less padding, less randomness). ``prefetch`` batches are built ahead in ``num_threads`` grain
    threads (``prefetch=0``: built in the caller's thread); ``num_threads > 1`` requires a
    thread-safe ``collate``. ``in_memory=True`` reads a source that is not already a list (e.g.
    the TFDS ArrayRecord split) once into a :class:`ColumnarSource`, so batches cost no record
    decoding (the one-time read is reported by ``bench/input_pipeline.py``); the jobs pass such a
    source already (:func:`pile_jax.prepare.ranking_groups_source`).

    When the lengths are known and ``collate`` takes a ``length`` keyword, it is called as
    ``collate(records, length=L)`` with ``L`` the longest group length of the whole *global*
    batch: the same on every process, so all processes can pad the step to one shape (a global
    ``jax.Array`` needs that), and with one process simply the batch's own longest group.
    """
    if in_memory and not isinstance(source, (list, tuple, ColumnarSource)):
        source = ColumnarSource(source)
    if length_aware and lengths is None:
        fn = getattr(collate, "group_lengths", None)
        if fn is not None:
            lengths = read_group_lengths(source, fn)
    return TrainLoader(
        source, global_batch_size=global_batch_size, seed=seed, process_index=process_index,
        process_count=process_count, collate=collate, drop_remainder=drop_remainder, shuffle=shuffle,
        lengths=lengths if length_aware else None, window=window, prefetch=prefetch,
        num_threads=num_threads)


class DevicePrefetch:
    """A queue of ``size`` batches already placed on device: ``next_batch()`` tops it up with
    ``place(loader.next_batch())`` and returns the oldest, so the next ``size - 1`` batches are
    already on their way while the returned one is used (``jax.device_put`` and friends are
    asynchronous: the copies overlap the running step). Same interface as the
    loader; ``state_dict()`` is the position of the next batch *returned*, not of the batches
    already queued, so checkpoints stay exact."""

    def __init__(self, loader, place: Callable[[Any], Any], size: int = 2):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.loader, self.place, self.size = loader, place, size
        self._queue: collections.deque = collections.deque()

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch

    def _fill(self):
        while len(self._queue) < self.size:
            state = self.loader.state_dict()
            self._queue.append((state, self.place(self.loader.next_batch())))

    def next_batch(self):
        self._fill()
        return self._queue.popleft()[1]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return dict(self._queue[0][0]) if self._queue else self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._queue.clear()
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self._queue.clear()
        self.loader.close()
