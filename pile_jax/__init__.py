"""pile_jax: distil neural rankers into small, fast students in JAX/Flax.

Functional core (pure, jit/vmap/pmap-safe, Rax-style ``f(scores, labels, *, where=None, ...)``):
:mod:`pile_jax.losses`, :mod:`pile_jax.metrics`, :mod:`pile_jax.ensemble` (PILE + baselines).
Models: :mod:`pile_jax.models` (Flax BERT-family encoders, cross-encoders, HF checkpoint I/O,
:class:`Reranker`). Training: :mod:`pile_jax.train`. Data: :mod:`pile_jax.data`.
"""

__version__ = "0.1.0"

from pile_jax.logs import silence_transformers_banner as _silence_transformers_banner

_silence_transformers_banner()  # transformers' "PyTorch was not found" banner: pile_jax never needs torch

from pile_jax import ensemble, losses, metrics
from pile_jax.ensemble import (
    ENSEMBLES,
    best_teacher_per_list,
    max_ensemble,
    mean,
    pile,
    pile_diagnostics,
    rank_average,
    teacher_report,
    format_teacher_report,
    weighted_mean,
    zscore_mean,
)
from pile_jax.losses import (
    LOSSES,
    listmle,
    listwise_kl,
    margin_mse,
    pairwise_distill_logistic,
    pairwise_hinge,
    pairwise_logistic,
    pointwise_mse,
    pointwise_sigmoid_ce,
    softmax_ce,
)
from pile_jax.metrics import (METRICS, average_precision, mrr, ndcg, pnr, pnr_counts, pnr_pooled,
                              precision, recall)


def __getattr__(name):
    # Models pull in transformers/flax; load them on first use.
    if name in ("Reranker", "load_pretrained", "export_pretrained", "CrossEncoder", "EncoderConfig"):
        from pile_jax import models

        return getattr(models, name)
    raise AttributeError(f"module 'pile_jax' has no attribute {name!r}")
