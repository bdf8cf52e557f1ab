"""A tensorflow-datasets builder that writes ranking groups as ArrayRecord (no TensorFlow needed).

What works without TensorFlow (tensorflow-datasets 4.9.x + array_record): generating with
``download_and_prepare`` into ``file_format="array_record"``, reading with
``builder.as_data_source()`` (random access, numpy arrays, strings as ``bytes``), and reopening a
prepared folder with ``tfds.builder_from_directory`` (no builder class needed). ``as_dataset``
(tf.data) needs TensorFlow and is not used.

Every example has a static shape fixed by the :class:`RankingGroupsConfig` (group size n,
T teachers)::

    query_id        Text
    doc_ids         Sequence(Text, length=n)      "" for padding
    labels          float32 [n]
    label_mask      bool    [n]
    mask            bool    [n]
    teacher_scores  float32 [T, n]
    teacher_mask    bool    [T, n]                only when the groups have one (absent scores False)

Examples are written in the order of the groups (shuffling disabled), so record ``i`` of a split
is group ``i``. Teacher names are kept in the dataset's metadata (``metadata.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import os
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from pile_jax.data.groups import check_groups, iter_group_examples, stack_group_examples, teacher_mask_of

_log = logging.getLogger(__name__)


class _DemoteToDebug(logging.Filter):
    """On the ``absl`` logger: TFDS's records become DEBUG records (so a handler at WARNING skips them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "tensorflow_datasets" in (record.pathname or "") or "custom data configuration" in str(record.msg):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@contextlib.contextmanager
def quiet_tfds():
    """TFDS writing data pile_jax made itself, without its chatter on screen: the absl warning
    "Using custom data configuration", the "Downloading and preparing dataset" / "Dataset ...
    downloaded and prepared" lines it prints to stdout, and its progress bars. Its log records are
    demoted to DEBUG; what it prints is logged at DEBUG on the ``pile_jax`` logger (shown with
    ``--log-level DEBUG``)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl = logging.getLogger("absl")
    demote = _DemoteToDebug()
    absl.addFilter(demote)
    bars = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        tqdm_utils.display_progress_bar(bars)
        absl.removeFilter(demote)
        for line in printed.getvalue().splitlines():
            if line.strip():
                _log.debug("[tfds] %s", line.strip())

__all__ = [
    "RankingGroupsConfig",
    "RankingGroups",
    "build_ranking_groups_dataset",
    "load_ranking_groups",
    "teacher_names_of",
    "records_to_groups",
]


@dataclasses.dataclass(eq=False)
class RankingGroupsConfig(tfds.core.BuilderConfig):
    """Fixes the static shapes: ``group_size`` (n) and ``num_teachers`` (T); ``teacher_names``
    (length T) go to the metadata; ``teacher_mask``: the examples carry a ``teacher_mask [T, n]``."""

    group_size: int = 0
    num_teachers: int = 0
    teacher_names: tuple[str, ...] = ()
    teacher_mask: bool = False


class RankingGroups(tfds.core.GeneratorBasedBuilder):
    """Ranking groups, one example per group. Construct with ``config=RankingGroupsConfig(...)``
    and ``groups_by_split={"train": groups, ...}`` (groups dicts from
    :func:`pile_jax.data.groups.build_groups`), then ``download_and_prepare()``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    # tfds 4.9.x's own `code_path` reaches for the `importlib_resources` backport (not a declared
    # dependency; absent here) when the builder lives in a package. The file path is all it needs.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None

    def __init__(self, *, groups_by_split: Mapping[str, Mapping] | None = None, **kwargs):
        self._groups_by_split = groups_by_split
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        n, T = cfg.group_size, cfg.num_teachers
        features = {
            "query_id": tfds.features.Text(),
            "doc_ids": tfds.features.Sequence(tfds.features.Text(), length=n),
            "labels": tfds.features.Tensor(shape=(n,), dtype=np.float32),
            "label_mask": tfds.features.Tensor(shape=(n,), dtype=np.bool_),
            "mask": tfds.features.Tensor(shape=(n,), dtype=np.bool_),
            "teacher_scores": tfds.features.Tensor(shape=(T, n), dtype=np.float32),
        }
        extra = {}
        if cfg.teacher_mask:
            features["teacher_mask"] = tfds.features.Tensor(shape=(T, n), dtype=np.bool_)
            extra["teacher_mask"] = True
        return tfds.core.DatasetInfo(
            builder=self,
            description="Ranking groups: candidates, graded labels and every teacher's score.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(
                teacher_names=list(cfg.teacher_names), group_size=n, num_teachers=T, **extra
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        if self._groups_by_split is None:
            raise ValueError("RankingGroups needs groups_by_split={split: groups} to be prepared")
        return {split: self._generate_examples(groups) for split, groups in self._groups_by_split.items()}

    def _generate_examples(self, groups):
        for i, example in enumerate(iter_group_examples(groups)):
            yield i, example


def _shape_of(groups_by_split: Mapping[str, Mapping]) -> tuple[int, int, tuple[str, ...]]:
    if not groups_by_split:
        raise ValueError("groups_by_split is empty")
    shapes = {}
    for split, groups in groups_by_split.items():
        G, n, T = check_groups(groups)
        if G == 0:
            raise ValueError(f"split {split!r} has no groups")
        shapes[split] = (n, T, tuple(groups["teacher_names"]))
    if len(set(shapes.values())) != 1:
        raise ValueError(f"splits disagree on (group size, #teachers, teacher names): {shapes}")
    return next(iter(shapes.values()))


def build_ranking_groups_dataset(
    groups_by_split: Mapping[str, Mapping],
    data_dir: str | os.PathLike,
    name: str,
    *,
    overwrite: bool = False,
) -> RankingGroups:
    """Write ``groups_by_split`` ({split: groups dict}) as ArrayRecord under
    ``data_dir/ranking_groups/<name>/1.0.0`` and return the prepared builder.

    ``name`` is the config name (e.g. ``"cranfield_bm25_n16_t3"``); n, T and the teacher names are
    taken from the groups and must agree across splits; every split needs >= 1 group. An existing
    prepared dataset is reused (after checking it holds these shapes and counts) unless
    ``overwrite``. Read with ``builder.as_data_source()[split]``. Multi-host: call this on one
    process (e.g. ``jax.process_index() == 0``), wait, then open the folder everywhere with
    :func:`load_ranking_groups`.
    """
    n, T, names = _shape_of(groups_by_split)
    has_mask = any(g.get("teacher_mask") is not None for g in groups_by_split.values())
    if has_mask:   # every split carries the mask (a split without one: all real items scored)
        groups_by_split = {s: dict(g, teacher_mask=teacher_mask_of(g)) for s, g in groups_by_split.items()}
    config = RankingGroupsConfig(
        name=name, version=RankingGroups.VERSION, group_size=n, num_teachers=T, teacher_names=names,
        teacher_mask=has_mask,
    )
    mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if not overwrite
            else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
    _log.debug("ranking groups %s: %s x %d items, %d teachers -> ArrayRecord under %s", name,
               {s: len(g["query_id"]) for s, g in groups_by_split.items()}, n, T, os.fspath(data_dir))
    with quiet_tfds():
        builder = RankingGroups(
            groups_by_split=groups_by_split, config=config, data_dir=os.fspath(data_dir),
            file_format="array_record",
        )
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    # A reused dataset must hold these groups' shapes and counts (catches stale data under `name`).
    meta = builder.info.metadata or {}
    stored = (meta.get("group_size"), meta.get("num_teachers"), tuple(meta.get("teacher_names", ())),
              bool(meta.get("teacher_mask", False)))
    counts = {s: builder.info.splits[s].num_examples if s in builder.info.splits else None
              for s in groups_by_split}
    wanted = {s: len(g["query_id"]) for s, g in groups_by_split.items()}
    if stored != (n, T, names, has_mask) or counts != wanted:
        raise ValueError(
            f"dataset {builder.data_dir} already exists with (n, T, teachers, teacher_mask)={stored}, "
            f"examples={counts}; these groups have {(n, T, names, has_mask)}, {wanted}. Use overwrite=True."
        )
    return builder


def load_ranking_groups(path: str | os.PathLike):
    """Reopen a prepared dataset folder (``.../ranking_groups/<name>/1.0.0``) read-only; returns the
    builder (``.as_data_source()[split]`` gives random access)."""
    return tfds.builder_from_directory(os.fspath(path))


def teacher_names_of(builder) -> list[str]:
    """The teacher names (T axis order) stored with a prepared dataset."""
    return list(builder.info.metadata["teacher_names"])


def records_to_groups(records, teacher_names=None) -> dict:
    """Records read from the data source (strings as bytes) -> a groups dict / batch."""
    return stack_group_examples(list(records), teacher_names)
