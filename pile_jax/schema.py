"""The registry of job config schemas (top layer: it imports the jobs, which declare their own).

Each job module declares its :class:`~pile_jax.config.JobSchema`: its top-level keys and the
schema fragments of its sections, which live next to the code that reads them (``TrainConfig``
and :func:`~pile_jax.train.loop.check_train_section`, :func:`~pile_jax.train.objective.check_objective`,
the inputs / teachers / ensembles in :mod:`pile_jax.prepare`, each job's own sections in
:mod:`pile_jax.pipeline`, :mod:`pile_jax.study`, :mod:`pile_jax.train_job`). :func:`validate`
hands a config to the collector :func:`pile_jax.config.validate`, which imports no behaviour.
"""

from __future__ import annotations

from typing import Any, Mapping

from pile_jax import config as C
from pile_jax import pipeline, study, train_job

__all__ = ["schemas", "validate"]


def schemas() -> dict[str, C.JobSchema]:
    """``{job: JobSchema}`` for ``run``, ``study`` and ``train``."""
    return {"run": pipeline.schema(), "study": study.schema(), "train": train_job.schema()}


def validate(cfg: Mapping[str, Any], *, job: str, data: str | None = None) -> None:
    """Checks the whole config of ``job`` (``run`` | ``study`` | ``train``) before any work
    (:func:`pile_jax.config.validate`); raises :class:`~pile_jax.config.ConfigError` naming the
    file and key. ``data``: the ``--data`` folder (``run``), standing in for ``data.collection``."""
    C.validate(cfg, job=job, data=data, schemas=schemas())
