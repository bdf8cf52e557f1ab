"""Objective: config parsing, in-step ensemble target, weighted per-list terms, stop_gradient."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.train_tiny import make_batch
from pile_jax import ensemble as ens
from pile_jax import losses
from pile_jax.config import ConfigError
from pile_jax.train.objective import Objective, compute_loss, resolve_target


def _jb(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_from_config_parses_and_validates():
    obj = Objective.from_config({
        "label_losses": {"pairwise_logistic": 1},
        "distill_losses": {"margin_mse": 0.5, "listwise_kl": 1.0},
        "ensemble": {"name": "pile"},
        "temperature": 2,
        "loss_options": {"listwise_kl": {"temperature": 4.0}},
    })
    assert obj.label_losses == {"pairwise_logistic": 1.0}
    assert obj.target == "ensemble" and obj.temperature == 2.0
    assert obj.term_names() == ["label/pairwise_logistic", "distill/margin_mse", "distill/listwise_kl"]
    assert Objective.from_config({"distill_losses": "margin_mse", "teacher_index": 1}).target == "teacher"
    assert Objective.from_config({"distill_losses": {"margin_mse": 1}, "ensemble": "mean"}).ensemble == {"name": "mean"}
    bad = [
        ({}, "no loss terms"),
        ({"label_losses": {"nope": 1.0}}, "unknown loss 'nope'"),
        ({"label_losses": {"pairwise_logistic": 1.0}, "extra_key": 1}, "unknown key"),
        ({"distill_losses": {"margin_mse": 1.0}, "ensemble": {"name": "nope"}}, "unknown ensemble"),
        ({"distill_losses": {"margin_mse": 1.0}, "target": "teacher"}, "teacher_index"),
        ({"distill_losses": {"margin_mse": 1.0}, "target": "magic"}, "target"),
        ({"label_losses": {"pairwise_logistic": "heavy"}}, "weights must be numbers"),
    ]
    for cfg, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            Objective.from_config(cfg)


@pytest.mark.parametrize("name", ["pile", "mean"])
def test_in_step_ensemble_target_equals_direct_call(name):
    batch = _jb(make_batch(3, 6, ragged=True))
    obj = Objective.from_config({"distill_losses": {"margin_mse": 1.0}, "ensemble": {"name": name}})
    got = jax.jit(lambda b: resolve_target(b, obj))(batch)
    mask = batch["mask"]
    teachers = jnp.where(mask[:, None, :], batch["teacher_scores"], 0.0)
    labels = jnp.where(mask & batch["label_mask"], batch["labels"], 0.0)
    # label-supervised ensembles pair only label_mask items (unjudged under "ignore")
    assert np.any(np.asarray(mask) & ~np.asarray(batch["label_mask"]))
    extra = {"label_where": batch["label_mask"]} if name in ens.LABEL_ENSEMBLES else {}
    want = ens.ensemble(name, jnp.transpose(teachers, (1, 0, 2)), labels, where=mask, **extra)
    if isinstance(want, tuple):
        want = want[0]
    np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), rtol=1e-6, atol=1e-6)
    assert got.dtype == jnp.float32 and got.shape == (6, 5)


def test_teacher_index_and_precomputed_targets():
    batch = _jb(make_batch(4, 3, ragged=False))
    t1 = resolve_target(batch, {"distill_losses": {"margin_mse": 1.0}, "teacher_index": 1})
    np.testing.assert_array_equal(t1, batch["teacher_scores"][:, 1])
    tp = resolve_target(batch, {"distill_losses": {"margin_mse": 1.0}, "target": "precomputed"})
    np.testing.assert_array_equal(tp, batch["target"])
    assert resolve_target(batch, {"label_losses": {"pointwise_mse": 1.0}}) is None


def test_weighted_sum_hand_computed():
    # two lists of 3; list 0 has a padded item, list 1 has an unjudged item
    scores = jnp.array([[1.0, 0.0, 5.0], [0.5, -0.5, 2.0]])
    batch = {
        "labels": jnp.array([[2.0, 0.0, 9.0], [1.0, 0.0, 1.0]]),
        "mask": jnp.array([[True, True, False], [True, True, True]]),
        "label_mask": jnp.array([[True, True, False], [True, True, False]]),
        "teacher_scores": jnp.array([[[3.0, 1.0, 7.0], [0.0, 0.0, 0.0]],
                                     [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]),
    }
    obj = Objective.from_config({
        "label_losses": {"pointwise_mse": 2.0},
        "distill_losses": {"pointwise_mse": 0.5},
        "teacher_index": 0,
    })
    loss, terms = compute_loss(scores, batch, obj)
    # label mse per list: list0 ((1-2)^2 + 0^2)/2 = 0.5; list1 ((0.5-1)^2 + (-0.5)^2)/2 = 0.25
    label = (0.5 + 0.25) / 2
    # distill mse vs teacher 0: list0 ((1-3)^2 + (0-1)^2)/2 = 2.5; list1 (0.25 + 6.25 + 4)/3 = 3.5
    distill = (2.5 + 3.5) / 2
    assert float(terms["label/pointwise_mse"]) == pytest.approx(label)
    assert float(terms["distill/pointwise_mse"]) == pytest.approx(distill)
    assert float(loss) == pytest.approx(2.0 * label + 0.5 * distill)


def test_terms_are_per_list_means_of_registry_losses():
    batch = _jb(make_batch(5, 4, ragged=True))
    scores = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
    obj = Objective.from_config({
        "label_losses": {"pairwise_logistic": 1.0, "softmax_ce": 0.25},
        "distill_losses": {"margin_mse": 0.5, "listwise_kl": 2.0},
        "ensemble": {"name": "mean"}, "temperature": 3.0,
    })
    loss, terms = compute_loss(scores, batch, obj)
    target = resolve_target(batch, obj)
    mask = np.asarray(batch["mask"])
    lmask = mask & np.asarray(batch["label_mask"])
    labels = jnp.where(mask, batch["labels"], 0.0)

    def per_list(fn, ref, where, **kw):
        vals = [float(fn(scores[b], ref[b], where=jnp.asarray(where[b]), **kw))
                for b in range(4) if where[b].any()]
        return sum(vals) / len(vals)

    want = {
        "label/pairwise_logistic": per_list(losses.LOSSES["pairwise_logistic"], labels, lmask),
        "label/softmax_ce": per_list(losses.LOSSES["softmax_ce"], labels, lmask),
        "distill/margin_mse": per_list(losses.LOSSES["margin_mse"], target, mask),
        "distill/listwise_kl": per_list(losses.LOSSES["listwise_kl"], target, mask, temperature=3.0),
    }
    for k, v in want.items():
        assert float(terms[k]) == pytest.approx(v, rel=1e-5, abs=1e-6), k
    total = want["label/pairwise_logistic"] + 0.25 * want["label/softmax_ce"] + \
        0.5 * want["distill/margin_mse"] + 2.0 * want["distill/listwise_kl"]
    assert float(loss) == pytest.approx(total, rel=1e-5)


def test_no_gradient_reaches_teachers_and_losses_are_float32():
    batch = _jb(make_batch(6, 4, ragged=True))
    obj = Objective.from_config({"label_losses": {"pairwise_logistic": 1.0},
                                 "distill_losses": {"margin_mse": 1.0, "listwise_kl": 1.0},
                                 "ensemble": {"name": "pile"}})
    scores = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.bfloat16)

    def f(s, teachers):
        b = dict(batch, teacher_scores=teachers)
        return compute_loss(s, b, obj)[0]

    loss = jax.jit(f)(scores, batch["teacher_scores"])
    assert loss.dtype == jnp.float32
    g_scores, g_teachers = jax.jit(jax.grad(f, argnums=(0, 1)))(scores, batch["teacher_scores"])
    assert float(jnp.abs(g_scores.astype(jnp.float32)).sum()) > 0
    assert float(jnp.abs(g_teachers).sum()) == 0.0


def test_aux_losses_weighted_and_required():
    batch = _jb(make_batch(7, 2, ragged=False))
    scores = jnp.zeros((2, 5))
    obj = Objective.from_config({"label_losses": {"pointwise_mse": 1.0}, "aux_losses": {"kd_hidden": 0.1}})
    base, _ = compute_loss(scores, batch, Objective.from_config({"label_losses": {"pointwise_mse": 1.0}}))
    loss, terms = compute_loss(scores, batch, obj, aux_losses={"kd_hidden": jnp.float32(3.0)})
    assert float(terms["aux/kd_hidden"]) == 3.0
    assert float(loss) == pytest.approx(float(base) + 0.3)
    with pytest.raises(KeyError, match="kd_hidden"):
        compute_loss(scores, batch, obj)
