"""Work folders of the jobs' students: what makes a checkpoint belong to a run.

``pile-jax run`` trains every (student run, seed) in ``<out>/students/<run>__seed<k>/``
(checkpoints, ``best_params.npz``, ``model.json``). The folder keeps the *spec* of the run that
made it (``model.json: run_spec``, written before training): the job config less what cannot
change the trained model (``eval``, ``ensembles.methods``, other runs and seeds, ``report_init``,
the paired tests' ``students.reference`` and ``students.test``),
the run name, the seed, the ``--data`` folder and the sha256 of the training groups actually read
(labels, teacher scores, candidates; transfer set included). On a rerun into the same ``--out``:

* an unchanged spec resumes the student from its checkpoints (a finished one is not trained again;
  one stopped by SIGTERM continues exactly);
* a changed spec (or a folder without one) starts the student clean: its checkpoints, parameter
  files, history, TensorBoard events and token store are removed first, and the log names the
  keys that changed. So ``model.json``, the checkpoints and ``best_params.npz`` always come from one
  run, and ``pile-jax export --which latest|best`` cannot export an older model under a newer card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import io as pio

__all__ = ["changed_keys", "groups_digest", "student_run_spec", "prepare_student_folder", "TRAINING_STATE"]

_log = logging.getLogger(__name__)

#: what a training run leaves in its work folder (removed when a student starts clean)
TRAINING_STATE = ("checkpoints", "best_params.npz", "final_params.npz", "history.json", "tensorboard", "tokens",
                  "model.json")


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like trees (a key present in one
    only counts as changed); ``[prefix or "(value)"]`` when two non-mappings differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(key)
            else:
                out.extend(changed_keys(old[k], new[k], key))
        return out
    return [] if old == new else [prefix or "(value)"]


def groups_digest(*groups: Mapping[str, Any] | None) -> str:
    """sha256 of ranking groups (query ids, doc ids, labels, masks, teacher scores; in order)."""
    h = hashlib.sha256()
    for g in groups:
        if g is None:
            h.update(b"none")
            continue
        h.update("\n".join(map(str, g["query_id"])).encode())
        for k in ("doc_ids", "labels", "label_mask", "mask", "teacher_scores"):
            a = np.asarray(g[k])
            h.update(k.encode() + str(a.shape).encode())
            h.update("\x00".join(map(str, a.ravel())).encode() if a.dtype.kind in "OUS" else
                     np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def student_run_spec(cfg: Mapping[str, Any], run_name: str, seed: int, *, data: str | None = None,
                     digest: str | None = None) -> dict:
    """What a student trained by ``pile-jax run`` depends on (module docstring), JSON-clean."""
    c = {k: v for k, v in cfg.items() if not str(k).startswith("_") and k != "eval"}
    students = dict(c.get("students") or {})
    for key in ("seeds", "report_init", "reference", "test"):   # no effect on what a student learns
        students.pop(key, None)
    students["runs"] = {run_name: (students.get("runs") or {}).get(run_name)}
    c["students"] = students
    if isinstance(c.get("ensembles"), Mapping):
        c["ensembles"] = {k: v for k, v in c["ensembles"].items() if k != "methods"}
    return json.loads(json.dumps({"config": c, "run": run_name, "seed": int(seed), "data": data,
                                  "groups_sha256": digest}, sort_keys=True, default=str))


def prepare_student_folder(work, spec: Mapping[str, Any], *, log: Callable[[str], None] | None = None) -> bool:
    """Makes ``work`` safe for the run of ``spec``; returns whether to resume from its checkpoints.

    Same spec in ``work/model.json`` -> True (resume). Otherwise the training state
    (:data:`TRAINING_STATE`) is removed (process 0; every process waits) and False is returned;
    when an earlier run was there, ``log`` says which keys changed."""
    log = log or _log.info
    work = pio.as_path(work)
    meta = work / "model.json"
    old = None
    if meta.exists():
        try:
            old = pio.read_json(meta).get("run_spec")
        except (OSError, ValueError, AttributeError):
            old = None
    has_state = any((work / name).exists() for name in TRAINING_STATE if name != "model.json")
    if old is not None and old == json.loads(json.dumps(spec, sort_keys=True)):
        return bool((work / "checkpoints").exists())
    if has_state or meta.exists():
        keys = changed_keys(old, dict(spec)) if isinstance(old, Mapping) else []
        keys = [k[len("config."):] if k.startswith("config.") else k for k in keys]
        why = (f"the config changed ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})" if keys
               else "it holds no run spec of an earlier run")
        log(f"{work}: starting this student clean: {why}; its earlier checkpoints are removed")
        if pio.is_primary():
            for name in TRAINING_STATE:
                p = work / name
                if p.is_dir():
                    p.rmtree()
                elif p.exists():
                    p.unlink()
        pio.barrier(f"pile_jax_clean_{work.name}")
    return False
