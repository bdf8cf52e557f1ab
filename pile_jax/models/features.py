"""The featuriser of each student input kind (above :mod:`students` and :mod:`frozen_docs`, which
it joins): ``pair`` (cross-encoders), ``two_tower`` / ``two_tower_prett`` / ``two_tower_words``
(the towers' special-token layouts) and ``frozen_docs`` (a query tower against a frozen document
index)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from .frozen_docs import DOC_ENCODER_OPTIONS, FrozenDocFeatures
from .students import INPUT_KINDS
from .tokenize import (
    DEFAULT_MAX_DOC_LENGTH,
    DEFAULT_MAX_LENGTH,
    DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
    PairTokenizer,
    TwoTowerTokenizer,
)

__all__ = ["make_features", "make_featurizer", "split_doc_side", "STUDENT_OPTIONS"]

#: per student kind, the options a student spec may set: those
#: :func:`pile_jax.models.students.build_student` takes, plus query_encoder's frozen document side
STUDENT_OPTIONS = {
    "cross_encoder": (),
    "bert_dot": ("compress_dim", "pooling", "normalize"),
    "colbert": ("compress_dim", "query_augment", "mask_token_id"),
    "prett": ("split_layer",),
    "tk": ("tk_layers", "embed_dim", "num_heads", "ff_dim", "mu", "sigma", "doc_position_offset", "dropout"),
    "query_encoder": ("pooling", "normalize") + DOC_ENCODER_OPTIONS,
}


def split_doc_side(kind: str, opts: dict) -> tuple[dict, dict]:
    """``(module options, frozen document-side options)``: kind query_encoder's ``doc_*`` options
    set its featuriser's frozen document encoder (:mod:`pile_jax.models.frozen_docs`)."""
    if kind != "query_encoder":
        return dict(opts), {}
    return ({k: v for k, v in opts.items() if k not in DOC_ENCODER_OPTIONS},
            {k: v for k, v in opts.items() if k in DOC_ENCODER_OPTIONS})


def make_features(input_kind: str, tokenizer_or_path, *, max_query_length: int = DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
                  max_doc_length: int = DEFAULT_MAX_DOC_LENGTH, max_length: int = DEFAULT_MAX_LENGTH,
                  dtype: Optional[str] = None, **doc_side):
    """The featuriser object of a student's ``input_kind``: a
    :class:`~pile_jax.models.tokenize.PairTokenizer` (``"pair"``: ``max_length``,
    ``max_query_length``) or a :class:`TwoTowerTokenizer` with the matching special-token layout.
    Both offer ``featurize(queries [B], docs [B][n])`` (text in) and ``tokenize_texts`` /
    ``assemble`` / ``item_lengths`` (tokenise once, assemble from ids: the train loop, the scorers).
    ``"frozen_docs"``: a :class:`~pile_jax.models.frozen_docs.FrozenDocFeatures` whose frozen
    document encoder is set by ``doc_side`` (``doc_encoder`` default the same checkpoint,
    ``doc_layers`` default all, ``doc_pooling`` default ``mean``, ``doc_normalize`` default true)
    (float32 whatever ``dtype``: :mod:`pile_jax.numerics`)."""
    if input_kind == "frozen_docs":
        unknown = sorted(set(doc_side) - set(DOC_ENCODER_OPTIONS))
        if unknown:
            raise TypeError(f"query_encoder: unknown document-side option(s) {unknown}; allowed: "
                            f"{sorted(DOC_ENCODER_OPTIONS)}")
        return FrozenDocFeatures(tokenizer_or_path, max_query_length=max_query_length, max_doc_length=max_doc_length,
                                 dtype=dtype, **doc_side)
    if doc_side:
        raise TypeError(f"{input_kind}: document-side options {sorted(doc_side)} are for the query_encoder student")
    if input_kind == "pair":
        return PairTokenizer(tokenizer_or_path, max_length=max_length, max_query_length=max_query_length)
    layouts = {
        "two_tower": dict(query_special=True, doc_special="cls_sep"),
        "two_tower_prett": dict(query_special=True, doc_special="sep", fixed_query_length=True),
        "two_tower_words": dict(query_special=False, doc_special="none"),
    }
    if input_kind not in layouts:
        raise ValueError(f"unknown input_kind {input_kind!r}; use one of {INPUT_KINDS}")
    return TwoTowerTokenizer(tokenizer_or_path, max_query_length=max_query_length, max_doc_length=max_doc_length,
                             **layouts[input_kind])


def make_featurizer(input_kind: str, tokenizer_or_path, *, max_query_length: int = DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
                    max_doc_length: int = DEFAULT_MAX_DOC_LENGTH, max_length: int = DEFAULT_MAX_LENGTH,
                    ) -> Callable[[Sequence[str], Sequence[Sequence[str]]], dict]:
    """``featurize(queries [B], docs [B][n]) -> batch arrays`` of :func:`make_features`."""
    return make_features(input_kind, tokenizer_or_path, max_query_length=max_query_length,
                         max_doc_length=max_doc_length, max_length=max_length).featurize
