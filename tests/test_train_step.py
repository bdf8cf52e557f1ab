"""Train step: pmap / shard_map / single device agree, grad accumulation, non-finite skip, RNG."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers.train_tiny import TinyScorer, init_params, make_batch, make_score_fn
from pile_jax.train import (
    create_train_state, eval_scores_fn, learning_rate_schedule, make_jit_step, make_mesh,
    make_optimizer, make_pmap_step, make_shard_map_step, make_train_step, put_batch,
    put_replicated, replicate, shard_batch, unreplicate,
)

D = 4
OBJ = {"label_losses": {"pointwise_mse": 0.5, "pairwise_logistic": 1.0},
       "distill_losses": {"margin_mse": 0.5}, "ensemble": {"name": "mean"}}
OPT = dict(learning_rate=1e-2, warmup_steps=1, total_steps=20)


def _setup(objective=OBJ, aux=False, dropout=0.0):
    model = TinyScorer(dropout=dropout)
    params = init_params(model, make_batch(0, 2), seed=0)
    tx = make_optimizer(**OPT)
    lr = learning_rate_schedule(**OPT)
    return model, params, tx, dict(score_fn=make_score_fn(model, aux=aux), objective=objective, tx=tx,
                                    lr_schedule=lr)


def _maxdiff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_devices():
    assert jax.local_device_count() == D, "tests expect 4 simulated CPU devices (XLA_FLAGS)"


@pytest.fixture(scope="module")
def steps():
    """Compiled steps shared by the tests below (CPU compiles dominate the runtime)."""
    _, params, tx, kw = _setup()
    mesh = make_mesh()
    return dict(params=params, tx=tx, kw=kw, mesh=mesh,
                single=make_jit_step(donate=False, **kw),
                pmap=make_pmap_step(donate=False, **kw),
                shard_map=make_shard_map_step(mesh, donate=False, **kw))


def test_pmap_and_shard_map_match_single_device(steps):
    params, tx, mesh = steps["params"], steps["tx"], steps["mesh"]
    key = jax.random.PRNGKey(0)
    s1 = create_train_state(params, tx, key)
    s2 = replicate(create_train_state(params, tx, key))
    s3 = put_replicated(create_train_state(params, tx, key), mesh)
    for i in range(3):
        b = make_batch(100 + i, 8, ragged=True)
        s1, m1 = steps["single"](s1, b)
        s2, m2 = steps["pmap"](s2, shard_batch(b, D))
        s3, m3 = steps["shard_map"](s3, put_batch(b, mesh))
        assert set(m1) == set(m2) == set(m3) == {
            "loss", "label/pointwise_mse", "label/pairwise_logistic", "distill/margin_mse",
            "grad_norm", "learning_rate", "nonfinite", "nonfinite_run", "skipped"}
        for k in m1:
            np.testing.assert_allclose(np.asarray(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(m3[k]), float(m1[k]), rtol=1e-5, atol=1e-6)
        assert int(m1["nonfinite"]) == 0
    assert int(s1.step) == int(unreplicate(s2).step) == int(s3.step) == 3
    assert _maxdiff(s1.params, unreplicate(s2.params)) <= 1e-5
    assert _maxdiff(s3.params, unreplicate(s2.params)) <= 1e-5
    assert _maxdiff(s1.opt_state, unreplicate(s2.opt_state)) <= 1e-5
    assert _maxdiff(s1.params, params) > 1e-3  # it did train
    # dispatcher
    kw = steps["kw"]
    assert callable(make_train_step("none", **kw)) and callable(make_train_step("shard_map", mesh=mesh, **kw))
    with pytest.raises(ValueError, match="parallel"):
        make_train_step("tpu_magic", **kw)


def test_grad_accumulation_matches_big_batch(steps):
    params, tx, kw = steps["params"], steps["tx"], steps["kw"]
    key = jax.random.PRNGKey(1)
    acc4 = make_jit_step(accum_steps=4, donate=False, **kw)
    s1 = create_train_state(params, tx, key)
    s2 = create_train_state(params, tx, key)
    for i in range(2):
        b = make_batch(200 + i, 8, ragged=True)
        s1, m1 = steps["single"](s1, b)
        s2, m2 = acc4(s2, b)
        for k in m1:
            np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-6)
    assert _maxdiff(s1.params, s2.params) <= 1e-5
    with pytest.raises(ValueError, match="accum_steps"):
        make_jit_step(accum_steps=3, **kw)(s1, make_batch(0, 8))


@pytest.mark.parametrize("field", ["teacher_scores", "labels"])
def test_nonfinite_batch_skips_update(steps, field):
    pstep = steps["pmap"]
    lr = learning_rate_schedule(**OPT)
    state = replicate(create_train_state(steps["params"], steps["tx"], jax.random.PRNGKey(0)))
    state, m = pstep(state, shard_batch(make_batch(1, 8, ragged=False), D))
    assert int(m["nonfinite"][0]) == 0
    bad = make_batch(2, 8, ragged=False)
    if field == "teacher_scores":
        bad[field][6, 1, 2] = np.nan  # one valid item on device 3 only
    else:
        bad[field][5, 0] = np.inf
    before = unreplicate(state)
    after, m = pstep(state, shard_batch(bad, D))
    assert np.all(np.asarray(m["nonfinite"]) == 1)  # every device agrees
    assert np.all(np.asarray(m["nonfinite_run"]) == 1) and np.all(np.asarray(m["skipped"]) == 1)
    assert not np.isfinite(np.asarray(m["loss"])).all()
    after1 = unreplicate(after)
    assert _maxdiff(after1.params, before.params) == 0.0
    # moments and Adam's count unchanged; only the schedule's counter advanced (with the step)
    counts = lambda s: [int(x.count) for x in jax.tree_util.tree_leaves(
        s.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(x, optax.ScaleByScheduleState)]
    assert counts(before) == [1] and counts(after1) == [2]
    floats = lambda s: [x for x in jax.tree_util.tree_leaves(s.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert _maxdiff(floats(after1), floats(before)) == 0.0
    adam = [x for x in jax.tree_util.tree_leaves(after1.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)]
    assert [int(a.count) for a in adam] == [1]
    # the step (data position, LR schedule) advanced; the skip counters went up
    assert (int(before.step), int(after1.step)) == (1, 2)
    assert (int(after1.skipped), int(after1.nonfinite_run)) == (1, 1)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(after1.params))
    # a second bad batch: two in a row
    after, m = pstep(after, shard_batch(bad, D))
    assert int(m["nonfinite_run"][0]) == 2 and int(unreplicate(after).skipped) == 2
    # training resumes on a clean batch, at LR lr(3): the skipped steps used their schedule slots
    after, m = pstep(after, shard_batch(make_batch(3, 8, ragged=False), D))
    a = unreplicate(after)
    assert int(m["nonfinite"][0]) == 0 and (int(a.step), int(a.skipped), int(a.nonfinite_run)) == (4, 2, 0)
    np.testing.assert_allclose(float(m["learning_rate"][0]), float(lr(3)), rtol=1e-6)
    assert int(m["nonfinite_run"][0]) == 0 and int(m["skipped"][0]) == 2


def test_padded_nan_is_ignored(steps):
    state = create_train_state(steps["params"], steps["tx"], jax.random.PRNGKey(0))
    b = make_batch(4, 8, ragged=False)
    b["mask"][1, -1] = False
    b["label_mask"][1, -1] = False
    b["teacher_scores"][1, :, -1] = np.nan
    b["labels"][1, -1] = np.nan
    new, m = steps["single"](state, b)
    assert int(m["nonfinite"]) == 0 and int(new.step) == 1


def test_rng_folded_per_step_device_and_microbatch_and_aux():
    def score_fn(params, batch, *, rng, train):
        scores = jnp.zeros(batch["mask"].shape) + 0.0 * params["w"][0]
        return scores, {"u": jax.random.uniform(rng), "w2": jnp.sum(params["w"] ** 2)}

    obj = {"label_losses": {"pointwise_mse": 1.0}, "aux_losses": {"u": 0.0, "w2": 0.5}}
    tx = optax.sgd(0.1)  # scale-sensitive, so the aux averaging over devices x micro-batches shows
    base = jnp.array([0, 7], jnp.uint32)
    state = replicate(create_train_state({"w": jnp.ones(3)}, tx, base))
    pstep = make_pmap_step(score_fn=score_fn, objective=obj, tx=tx, accum_steps=2)
    for step in range(2):
        w_before = np.asarray(unreplicate(state).params["w"])
        state, m = pstep(state, shard_batch(make_batch(step, 8, ragged=False), D))
        want = np.mean([
            float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(
                jax.random.fold_in(base, step), dev), micro)))
            for dev in range(D) for micro in range(2)])
        np.testing.assert_allclose(np.asarray(m["aux/u"]), want, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(m["aux/w2"]), np.sum(w_before ** 2), rtol=1e-6)
    # d(0.5 * |w|^2)/dw = w: two SGD steps with lr 0.1 give 0.9**2
    np.testing.assert_allclose(np.asarray(unreplicate(state).params["w"]), 0.81, rtol=1e-6)


def test_eval_scores_fn_is_deterministic_float32():
    model, params, _, _ = _setup(dropout=0.5)
    b = make_batch(9, 3)
    f = eval_scores_fn(make_score_fn(model))
    s = f(params, {k: b[k] for k in ("input_ids", "attention_mask", "mask")})
    assert s.shape == (3, 5) and s.dtype == jnp.float32
    np.testing.assert_array_equal(s, f(params, b))


def test_shard_batch_checks_divisibility():
    with pytest.raises(ValueError, match="divisible"):
        shard_batch(make_batch(0, 6), 4)
    out = shard_batch(make_batch(0, 8), 4)
    assert out["input_ids"].shape == (4, 2, 5, 6) and out["teacher_scores"].shape == (4, 2, 3, 5)


def test_state_rng_accepts_typed_keys_and_distributed_is_noop_unconfigured(monkeypatch):
    tx = optax.sgd(0.1)
    s = create_train_state({"w": np.ones(2, np.float64)}, tx, jax.random.key(3))
    assert s.rng.dtype == jnp.uint32 and s.rng.shape == (2,)
    assert s.params["w"].dtype == jnp.float32 and int(s.step) == 0
    from pile_jax.train import maybe_initialize_distributed
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert maybe_initialize_distributed() is False
    assert maybe_initialize_distributed("127.0.0.1:1", 1, 0) is False  # single process: nothing to do


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_step_receives_batches_already_resident_on_their_devices(monkeypatch, mode):
    """Device prefetch (issue 19): under pmap too, every array the compiled step receives from
    train() is a jax.Array already on the local devices (one row block per device, in pmap's
    device order), holding exactly the rows the loader built (not NumPy that pmap copies at call
    time)."""
    from helpers.train_tiny import TINY_OBJECTIVE, tiny_collection, tiny_ranker
    from pile_jax.caches import BoundedCache
    from pile_jax.train import loop
    from pile_jax.train.step import Placement, make_placement

    seen = []

    class Spy(Placement):
        def make_step(self, **kw):
            step = super().make_step(**kw)

            def wrapped(state, batch):
                seen.append({k: v for k, v in batch.items()})
                return step(state, batch)
            return wrapped

    real = make_placement(mode)
    monkeypatch.setattr(loop, "make_placement", lambda parallel: Spy(real.mode, real.devices_per_process, real.mesh))
    monkeypatch.setattr(loop, "STEPS", BoundedCache("test", "steps", maxsize=4))
    built = []
    queries, docs, examples = tiny_collection()
    ranker = tiny_ranker()
    orig = loop.make_collate

    def spy_collate(*a, **kw):
        collate = orig(*a, **kw)

        def c(records, **k):
            out = collate(records, **k)
            built.append({key: np.array(v) for key, v in out.items()})
            return out
        c.group_lengths = getattr(collate, "group_lengths", None)
        return c
    monkeypatch.setattr(loop, "make_collate", spy_collate)
    loop.train(ranker, source=examples, objective=TINY_OBJECTIVE, queries=queries, docs=docs,
               config={"batch_size": 8, "steps": 3, "parallel": mode, "progress": False})
    assert len(seen) == 3
    for batch, host in zip(seen, built):
        for k, v in batch.items():
            assert isinstance(v, jax.Array) and v.is_fully_addressable, (k, type(v))
            shards = sorted(v.addressable_shards, key=lambda s: jax.local_devices().index(s.device))
            assert [s.device for s in shards] == jax.local_devices()[:D], k
            rows = np.concatenate([np.asarray(s.data).reshape((-1,) + host[k].shape[1:]) for s in shards])
            np.testing.assert_array_equal(rows, host[k])
