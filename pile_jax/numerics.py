"""The precision policy, in one place (docs/architecture.md, "Precision").

* Master weights and optimizer state: float32 (:func:`pile_jax.train.step.create_train_state`).
* Compute: the model's ``dtype`` (``float32`` on CPU configs, ``bfloat16`` in the GPU/TPU presets)
  for the encoder body, where bf16 pays (matmul throughput, activation memory).
* Every score that is reported, compared or cached is computed at ``precision=HIGHEST``
  (:data:`SCORE_PRECISION`): the score heads, the cosines and dot products of the two-tower
  students (``q · v_d``, ColBERT's MaxSim) explicitly, and every scoring / encoding call
  (``scoring.score_pairs``, the bi-encoder teacher, the frozen document index) runs under
  :func:`score_precision`, i.e. ``jax.default_matmul_precision("highest")``: float32 matmuls are
  float32 on TPU (not bf16 passes) and on A100/H100 (not TF32), so teacher files, dev/test runs
  and exports agree with a float32 reference on any device.
* The frozen document index of the ``query_encoder`` student is float32 whatever the student's
  compute dtype: a bf16-trained query tower is trained against the float32 vectors its export
  reproduces.

:func:`policy` is what cache keys, teacher spec sidecars and export metadata record. Its cost is
measured by ``bench/precision_cost.py`` (bench/RESULTS.md).
"""

from __future__ import annotations

import jax

__all__ = ["SCORE_PRECISION", "SCORE_PRECISION_NAME", "INDEX_DTYPE", "score_precision", "policy"]

SCORE_PRECISION = jax.lax.Precision.HIGHEST
SCORE_PRECISION_NAME = "highest"
INDEX_DTYPE = "float32"


def score_precision():
    """Context manager: matmuls traced and run inside it default to :data:`SCORE_PRECISION`
    (``jax.default_matmul_precision``; part of jit's cache key, so wrap the calls, not only the
    traced body)."""
    return jax.default_matmul_precision(SCORE_PRECISION_NAME)


def policy() -> dict:
    """The policy as recorded in cache keys, teacher sidecars and export metadata."""
    return {"master_weights": "float32", "score_matmul_precision": SCORE_PRECISION_NAME,
            "document_index_dtype": INDEX_DTYPE}
