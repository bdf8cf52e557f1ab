"""train() with a gs:// work dir on a Google Cloud Storage emulator on loopback: the real path
(etils.epath -> gcsfs for files, orbax -> tensorstore's gcs driver for arrays), crash after 4
steps, resume, final params bit-identical to an uninterrupted run; nothing lands on local disk.

Opt-in (not in the default suite): ``pip install gcsfs gcp-storage-emulator`` and
``PILE_JAX_GCS_TEST=1 python -m pytest tests/test_train_gcs.py``. On 2026-11-30 it passed in some
runs and failed in others inside tensorstore's writes to the emulator ("Malformed
StorageGeneration" while an async checkpoint was in flight), an emulator incompatibility rather
than a pile_jax fault, so CI relies on tests/test_train_preemption.py (a fake ``gs://`` fsspec
filesystem, URL passed unchanged to orbax) and this test is run by hand.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import socket

import jax
import numpy as np
import pytest

if os.environ.get("PILE_JAX_GCS_TEST") != "1":
    pytest.skip("opt-in: set PILE_JAX_GCS_TEST=1 (see the module docstring)", allow_module_level=True)
pytest.importorskip("gcsfs")
emulator = pytest.importorskip("gcp_storage_emulator.server")

from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker  # noqa: E402
from pile_jax.io import as_path, load_npz, read_json  # noqa: E402
from pile_jax.train.loop import train  # noqa: E402

CFG = {"batch_size": 4, "steps": 6, "checkpoint_every": 2, "log_every": 2, "progress": False,
       "learning_rate": 0.01, "parallel": "none"}


class Crash(RuntimeError):
    pass


@pytest.fixture
def gcs(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="bkt")
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs (epath's gs:// backend)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # tensorstore (orbax's array writes)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")  # no credential lookups off the machine
    yield
    server.stop()


def test_crash_and_resume_on_a_gs_workdir(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    queries, docs, examples = tiny_collection()
    poison = [5]
    ranker = tiny_ranker()  # one score function: the three runs share one compiled step
    ref = train(ranker, source=PoisonedSource(examples, poison), objective=TINY_OBJECTIVE,
                queries=queries, docs=docs, config=CFG)
    reads = []

    def crash(i):
        reads.append(i)
        if len(reads) > len(examples) + 5 * CFG["batch_size"]:   # length pass; batch 5 is read during step 4
            raise Crash

    with pytest.raises(Crash):
        train(ranker, source=PoisonedSource(examples, poison, on_read=crash), objective=TINY_OBJECTIVE,
              queries=queries, docs=docs, config=CFG, workdir="gs://bkt/run")
    lines = []
    res = train(ranker, source=PoisonedSource(examples, poison), objective=TINY_OBJECTIVE,
                queries=queries, docs=docs, config=CFG, workdir="gs://bkt/run", resume=True, log=lines.append)
    assert lines[0].startswith("resumed from step 4 ")
    saved = load_npz("gs://bkt/run/final_params.npz")
    for k, v in jax.tree_util.tree_leaves_with_path(ref.final_params):
        np.testing.assert_array_equal(np.asarray(dict(jax.tree_util.tree_leaves_with_path(res.final_params))[k]),
                                      np.asarray(v))
        np.testing.assert_array_equal(saved[jax.tree_util.keystr(k)], np.asarray(v))
    assert read_json("gs://bkt/run/history.json")[-1]["step"] == CFG["steps"]
    assert sorted(p.name for p in as_path("gs://bkt/run/checkpoints").iterdir() if p.name.isdigit())[-1] == "6"
    assert list(tmp_path.iterdir()) == []  # nothing was written to a local "gs:" folder
