"""Checkpointer: exact save/restore of state + extra, keep-N, periodic/forced saves, SIGTERM flag."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import signal

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax.train.checkpoint import Checkpointer, install_sigterm_handler
from pile_jax.train.optim import make_optimizer
from pile_jax.train.step import create_train_state, replicate, unreplicate


def _state(seed):
    r = np.random.default_rng(seed)
    params = {"Dense_0": {"kernel": r.normal(size=(4, 3)).astype(np.float32),
                          "bias": r.normal(size=(3,)).astype(np.float32)},
              "LayerNorm_0": {"scale": np.ones(3, np.float32)}}
    tx = make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=10)
    state = create_train_state(params, tx, jax.random.PRNGKey(seed))
    # make the optimizer state non-trivial
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.1), state.params)
    _, opt_state = jax.jit(tx.update)(grads, state.opt_state, state.params)
    return state.replace(step=jnp.int32(7), opt_state=opt_state)


def _equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))


def test_save_restore_roundtrip_and_keep_n(tmp_path):
    state = _state(1)
    extra = {"sampler": {"epoch": 1, "step_in_epoch": np.int64(3)}, "rng": np.array([1, 2], np.uint32),
             "config": {"lr": 1e-3, "names": ["a", "b"]}}
    with Checkpointer(tmp_path / "ck", max_to_keep=2, save_interval_steps=3) as ck:
        assert ck.restore_latest(state) is None
        saved = [s for s in range(1, 8) if ck.save(s, state.replace(step=jnp.int32(s)), extra)]
        assert ck.save(8, state, extra, force=True)  # final save off the interval
        assert not ck.save(8, state, extra, force=True)  # already there
        ck.wait()
        assert saved == [1, 3, 6]  # orbax also saves the first step
        assert ck.all_steps() == [6, 8]  # keep-N
    template = _state(2)  # different values, same structure
    restored = Checkpointer(tmp_path / "ck").restore_latest(template)
    assert restored is not None
    got, got_extra = restored
    assert _equal(got, state)
    assert type(got) is type(state)
    assert got_extra == {"sampler": {"epoch": 1, "step_in_epoch": 3}, "rng": [1, 2],
                         "config": {"lr": 1e-3, "names": ["a", "b"]}}
    older, _ = Checkpointer(tmp_path / "ck").restore(6, template)
    assert int(older.step) == 6


def test_save_replicated_state_after_unreplicate(tmp_path):
    state = _state(3)
    rep = replicate(state)
    ck = Checkpointer(tmp_path / "ck2", async_save=True)
    ck.save(7, unreplicate(rep), {"k": 1}, force=True)
    ck.close()
    got, extra = Checkpointer(tmp_path / "ck2").restore_latest(_state(4))
    assert _equal(got, state) and extra == {"k": 1}


def test_sigterm_sets_flag_and_uninstalls(tmp_path):
    seen = []
    flag = install_sigterm_handler(seen.append)
    try:
        assert not flag.requested
        assert not Checkpointer(tmp_path / "ck3").should_stop(1, flag)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and seen == [signal.SIGTERM]
        assert Checkpointer(tmp_path / "ck4").should_stop(2, flag)
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_url_directory_is_kept_and_relative_local_made_absolute(tmp_path, monkeypatch):
    """The directory reaches orbax as given for a URL (never os.path.abspath'd into a local
    "gs:" folder); a relative local path is made absolute."""
    import orbax.checkpoint as ocp

    seen = []
    monkeypatch.setattr(ocp, "CheckpointManager", lambda directory, **kw: seen.append(directory))
    ck = Checkpointer("gs://bucket/run/checkpoints")
    assert str(ck.directory) == "gs://bucket/run/checkpoints" == str(seen[-1])
    monkeypatch.chdir(tmp_path)
    ck = Checkpointer("rel/ck")
    assert str(seen[-1]) == str(tmp_path / "rel" / "ck") == str(ck.directory)
    assert not (tmp_path / "gs:").exists()


def test_sigterm_handler_off_the_main_thread_installs_nothing():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(install_sigterm_handler()))
    t.start()
    t.join()
    assert not out[0].requested and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    out[0].uninstall()


def test_best_params_live_in_the_checkpoint_resume_agrees_without_the_side_file(tmp_path):
    """Issue 19: the dev-selected params are saved in the orbax checkpoint, so a resumed run returns
    the best params of an uninterrupted run even when best_params.npz is missing (a host whose
    folder is not process 0's) or newer than the checkpoint (a later best written after it)."""
    from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker
    from pile_jax.params import save_params
    from pile_jax.train.loop import train

    queries, docs, examples = tiny_collection()
    init = tiny_ranker(dropout=0.0)
    flat0 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(init.params)])

    def evaluate(params):   # distance from the init, negated: the first eval (step 2) is the best
        flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(params)])
        return {"ndcg_cut_10": -float(np.sum((flat - flat0) ** 2))}

    cfg = {"batch_size": 4, "steps": 8, "eval_every": 2, "checkpoint_every": 2, "log_every": 2,
           "progress": False, "parallel": "none", "learning_rate": 0.05}
    ref = train(tiny_ranker(dropout=0.0), source=examples, objective=TINY_OBJECTIVE, queries=queries,
                docs=docs, config=cfg, evaluate=evaluate)
    assert ref.best_step == 2

    class Crash(RuntimeError):
        pass

    reads = []

    def crash(i):
        reads.append(i)
        if len(reads) > len(examples) + 5 * 4:   # after step 4's checkpoint
            raise Crash()

    work = tmp_path / "work"
    try:
        train(tiny_ranker(dropout=0.0), source=PoisonedSource(examples, on_read=crash), objective=TINY_OBJECTIVE,
              queries=queries, docs=docs, config=cfg, evaluate=evaluate, workdir=str(work))
        raise AssertionError("should have crashed")
    except Crash:
        pass
    assert (work / "best_params.npz").exists()
    (work / "best_params.npz").unlink()           # another host's view of the work folder
    res = train(tiny_ranker(dropout=0.0), source=examples, objective=TINY_OBJECTIVE, queries=queries,
                docs=docs, config=cfg, evaluate=evaluate, workdir=str(work), resume=True)
    assert res.best_step == 2
    for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(res.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    # a side file newer than the checkpoint (e.g. the final params) is not what resume returns
    save_params(work / "best_params.npz", res.final_params)
    steps = Checkpointer(str(work / "checkpoints")).all_steps()
    assert steps[-1] == 8
    res2 = train(tiny_ranker(dropout=0.0), source=examples, objective=TINY_OBJECTIVE, queries=queries,
                 docs=docs, config=cfg, evaluate=evaluate, workdir=str(work), resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(res2.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
