"""Data: collections, TREC files, ranking groups, the TFDS/ArrayRecord builder, the batch order
(sampler) and the training loader.

``tfds_builder`` imports tensorflow-datasets (slow); its names are loaded on first use.
"""

from pile_jax.data.collection import SHIPPED_COLLECTIONS, Collection, load_collection
from pile_jax.data.errors import DataError, Preempted
from pile_jax.data.layouts import LAYOUTS, detect_layout
from pile_jax.data.textstore import TextStore
from pile_jax.data.groups import (
    POLICIES,
    build_groups,
    check_groups,
    iter_group_examples,
    num_groups,
    select_candidates,
    stack_group_examples,
    take_groups,
    teacher_mask_of,
)
from pile_jax.data.loader import DevicePrefetch, TrainLoader, make_train_loader, read_group_lengths
from pile_jax.data.sampler import PAD_INDEX, epoch_batches, process_slice, stack_records, steps_per_epoch
from pile_jax.data.teacher_files import FORMATS as TEACHER_FORMATS
from pile_jax.data.teacher_files import TRANSFORMS as TEACHER_TRANSFORMS
from pile_jax.data.teacher_files import ScoreTriples, read_teacher_file
from pile_jax.data.teacher_table import TeacherTable, join_teachers
from pile_jax.data.trec import (
    candidates_from_run,
    rank_order,
    read_qrels,
    read_run,
    read_teacher_scores,
    read_triples,
    write_qrels,
    write_run,
    write_teacher_scores,
    write_triples,
)

_TFDS_NAMES = (
    "RankingGroups",
    "RankingGroupsConfig",
    "build_ranking_groups_dataset",
    "load_ranking_groups",
    "records_to_groups",
    "teacher_names_of",
)


def __getattr__(name):
    if name in _TFDS_NAMES:
        from pile_jax.data import tfds_builder

        return getattr(tfds_builder, name)
    raise AttributeError(f"module 'pile_jax.data' has no attribute {name!r}")


__all__ = [
    "Collection", "DataError", "DevicePrefetch", "LAYOUTS", "Preempted", "TextStore", "detect_layout", "ScoreTriples",
    "TEACHER_FORMATS", "TEACHER_TRANSFORMS", "TeacherTable", "join_teachers", "read_teacher_file", "PAD_INDEX",
    "POLICIES", "SHIPPED_COLLECTIONS",
    "TrainLoader", "build_groups", "candidates_from_run", "check_groups", "epoch_batches",
    "iter_group_examples", "load_collection", "make_train_loader", "num_groups", "process_slice",
    "rank_order", "read_group_lengths", "read_qrels", "read_run", "read_teacher_scores",
    "read_triples", "select_candidates", "stack_group_examples", "stack_records",
    "steps_per_epoch", "take_groups", "teacher_mask_of", "write_qrels", "write_run", "write_teacher_scores",
    "write_triples", *_TFDS_NAMES,
]
