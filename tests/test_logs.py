"""pile_jax.logs: the CLI's logging setup, the log file, the transformers banner, and the CLI's output."""

import io
import logging
import os
import subprocess
import sys
import time

import pytest

from pile_jax import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_logging():
    """Restore the pile_jax and root loggers after a test that calls setup_logging."""
    pj, root = logging.getLogger("pile_jax"), logging.getLogger()
    saved = (list(pj.handlers), pj.level, pj.propagate, list(root.handlers), dict(logs._state))
    yield
    pj.handlers[:] = saved[0]
    pj.setLevel(saved[1])
    pj.propagate = saved[2]
    root.handlers[:] = saved[3]
    logs._state.update(saved[4])


def _lines(stream):
    return stream.getvalue().splitlines()


def test_format_has_time_and_the_level_only_from_warning_up(clean_logging):
    out = io.StringIO()
    logs.setup_logging("INFO", stream=out, process_index=0)
    log = logging.getLogger("pile_jax.some.module")
    log.info("step %d done", 3)
    log.warning("careful")
    info, warn = _lines(out)
    stamp = time.strftime("%H:%M")
    assert info[:5] <= stamp and info[2] == ":" and info[5] == ":" and info[8:] == " step 3 done"
    assert warn[8:] == " WARNING careful"


def test_quiet_debug_and_other_processes(clean_logging):
    log = logging.getLogger("pile_jax.x")
    out = io.StringIO()
    logs.setup_logging("INFO", quiet=True, stream=out, process_index=0)
    log.info("hidden")
    log.warning("shown")
    assert [l[9:] for l in _lines(out)] == ["WARNING shown"]
    assert not logs.progress_enabled()

    out = io.StringIO()
    logs.setup_logging("debug", stream=out, process_index=0)
    log.debug("detail")
    assert [l[9:] for l in _lines(out)] == ["detail"]
    assert logs.progress_enabled()

    out = io.StringIO()
    logs.setup_logging("INFO", stream=out, process_index=1)  # not process 0: warnings only, no bars
    log.info("hidden")
    log.error("bad")
    assert [l[9:] for l in _lines(out)] == ["ERROR bad"]
    assert not logs.progress_enabled()
    with pytest.raises(ValueError, match="unknown log level"):
        logs.setup_logging("LOUD")


def test_setup_twice_does_not_duplicate_lines_and_other_libraries_warn_only(clean_logging):
    out = io.StringIO()
    logs.setup_logging("INFO", stream=out, process_index=0)
    logs.setup_logging("INFO", stream=out, process_index=0)
    logging.getLogger("pile_jax.y").info("once")
    other = logging.getLogger("some_library")
    other.setLevel(logging.DEBUG)  # as bm25s does to its own logger
    other.debug("noise")
    other.warning("real problem")
    assert [l[9:] for l in _lines(out)] == ["once", "WARNING [some_library] real problem"]


def test_the_transformers_no_torch_banner_is_dropped_other_warnings_kept(caplog):
    logs.silence_transformers_banner()
    logs.silence_transformers_banner()  # idempotent
    tf = logging.getLogger("transformers")
    assert sum(isinstance(f, logs._BannerFilter) for f in tf.filters) == 1
    with caplog.at_level(logging.WARNING, logger="transformers"):
        tf.warning("PyTorch was not found. Models won't be available and only tokenizers, configuration and "
                   "file/data utilities can be used.")
        tf.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_log_to_file_appends_and_does_not_double_when_nested(tmp_path, clean_logging):
    logging.getLogger("pile_jax").setLevel(logging.NOTSET)  # library use: nothing configured
    path = tmp_path / "run" / "log.txt"
    log = logging.getLogger("pile_jax.z")
    with logs.log_to_file(path, enabled=True):
        with logs.log_to_file(path, enabled=True) as inner:
            assert inner is None
            log.info("one")
    with logs.log_to_file(path, enabled=True):
        log.warning("two")
    log.info("after the block: not in the file")
    lines = path.read_text().splitlines()
    assert [l.split(" ", 2)[2] for l in lines] == ["one", "WARNING two"]
    with logs.log_to_file(tmp_path / "other.txt", enabled=False) as h:
        log.info("x")
    assert h is None and not (tmp_path / "other.txt").exists()


def test_progress_is_a_pass_through_when_disabled(clean_logging):
    logs.setup_logging("WARNING", stream=io.StringIO(), process_index=0)
    bar = logs.progress(range(3), desc="x")
    assert list(bar) == [0, 1, 2] and bar.disable
    bar = logs.progress(total=5, desc="y")
    bar.update(2)
    bar.close()


def _cli(args, *, hide_torch=True):
    """Runs ``pile-jax ARGS`` in a subprocess in which torch looks absent to transformers (the
    situation that prints transformers' banner), then imports transformers there too."""
    code = ("import sys\n"
            + ("sys.modules['torch'] = None\n" if hide_torch else "")
            + "from pile_jax.cli import main\n"
            "import transformers, transformers.utils\n"
            f"rc = main({args!r})\n"
            "sys.exit(rc)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_cli_output_starts_with_pile_jax_lines_and_follows_the_level(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\nimport transformers"],
                           capture_output=True, text=True, timeout=300)
    assert "PyTorch was not found" in probe.stderr  # the banner this test is about does appear without pile_jax

    base = ["score", "--collection", "cranfield", "--split", "test", "--depth", "3", "--teacher", "bm=bm25",
            "--out", str(tmp_path / "s")]
    p = _cli(base)
    assert p.returncode == 0, p.stderr
    err = p.stderr.splitlines()
    assert err and "teacher bm (bm25): scored" in err[0], p.stderr
    assert "PyTorch was not found" not in p.stderr and "WARNING" not in p.stderr and "DEBUG:" not in p.stderr
    assert "arguments" not in p.stderr  # INFO hides DEBUG lines (the --log-level debug run below shows them)
    assert p.stdout.splitlines() == [f"bm: 135 scores -> {tmp_path / 's' / 'bm.tsv'}"]  # the result, on stdout

    p = _cli(base + ["--quiet"])
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith("bm: 135 scores")

    p = _cli(base + ["--log-level", "debug"])
    assert p.returncode == 0, p.stderr
    assert "teacher bm: reusing" in p.stderr and "pile-jax score: arguments {" in p.stderr


def test_first_screen_has_no_library_chatter_for_data_and_models_pile_jax_makes(clean_logging, tmp_path, capsys):
    """issue 22: the default run opened with absl's "Using custom data configuration", TFDS's
    "Downloading and preparing dataset" lines (for ranking groups pile_jax writes itself) and
    "no score head in the checkpoint" for models used as encoders only. At INFO none of it
    reaches the screen; at DEBUG the TFDS lines are kept (library chatter lives at DEBUG)."""
    import numpy as np

    from pile_jax import rankers
    from pile_jax.data.tfds_builder import build_ranking_groups_dataset

    groups = {"query_id": ["a", "b"], "doc_ids": np.array([["1", "2"], ["3", "4"]]), "teacher_names": ["t"],
              "labels": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), "label_mask": np.ones((2, 2), bool),
              "mask": np.ones((2, 2), bool), "teacher_scores": np.zeros((2, 1, 2), np.float32)}
    out = io.StringIO()
    logs.setup_logging("INFO", stream=out, process_index=0)
    logging.getLogger("absl").setLevel(logging.INFO)   # as absl leaves it once initialised
    build_ranking_groups_dataset({"train": groups}, tmp_path / "tfds", "tiny_n2")
    rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=16)
    rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, max_length=16, max_query_length=8,
                    max_doc_length=8)
    screen = out.getvalue() + "".join(capsys.readouterr())
    for chatter in ("custom data configuration", "Downloading and preparing", "downloaded and prepared",
                    "score head", "Generating", "Shuffling"):
        assert chatter not in screen, screen

    out = io.StringIO()
    logs.setup_logging("DEBUG", stream=out, process_index=0)
    build_ranking_groups_dataset({"train": groups}, tmp_path / "tfds", "tiny_n2b")
    assert "Downloading and preparing" in out.getvalue()
    assert not [l for l in out.getvalue().splitlines() if "WARNING" in l and "custom data configuration" in l]
