"""Optimizer: schedule values, weight-decay mask, AdamW/clipping behaviour."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pile_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask


def test_linear_schedule_values():
    f = learning_rate_schedule(learning_rate=1e-3, warmup_steps=10, total_steps=110, schedule="linear")
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 60: 5e-4, 85: 2.5e-4, 110: 0.0, 500: 0.0}
    for step, value in expected.items():
        assert float(f(step)) == pytest.approx(value, abs=1e-9), step


def test_cosine_schedule_values():
    f = learning_rate_schedule(learning_rate=2.0, warmup_steps=4, total_steps=104, schedule="cosine",
                               end_learning_rate=0.5)
    assert float(f(2)) == pytest.approx(1.0)
    assert float(f(4)) == pytest.approx(2.0)
    assert float(f(54)) == pytest.approx(0.5 + 1.5 * 0.5)  # half way: cos(pi/2) = 0
    assert float(f(29)) == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-6)
    assert float(f(104)) == pytest.approx(0.5)
    assert float(f(1000)) == pytest.approx(0.5)


def test_constant_and_no_warmup():
    f = learning_rate_schedule(learning_rate=3e-4, warmup_steps=2, schedule="constant")
    assert [float(f(s)) for s in (0, 1, 2, 100)] == pytest.approx([0.0, 1.5e-4, 3e-4, 3e-4])
    g = learning_rate_schedule(learning_rate=1.0, warmup_steps=0, total_steps=4)
    assert [float(g(s)) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    # jit-able with a traced step
    assert float(jax.jit(g)(jnp.int32(2))) == pytest.approx(0.5)


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_schedule(learning_rate=1.0, total_steps=5, schedule="step")
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_schedule(learning_rate=1.0, warmup_steps=1, schedule="linear")
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_schedule(learning_rate=1.0, warmup_steps=10, total_steps=5)


def _params():
    return {
        "encoder": {
            "layer_0": {
                "attention": {"query": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
                "attention_output_LayerNorm": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
                "ffn_layer_norm": {"gamma": jnp.ones(2)},
                "ln_1": {"weight": jnp.ones(2)},
                "mlp": {"kernel": jnp.ones((2, 2))},
            },
            "embeddings": {"word": {"embedding": jnp.ones((5, 2))}},
        },
        "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        "RMSNorm_0": {"scale": jnp.ones(2)},
        "head": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)},
        "kernel_ln": {"kernel": jnp.ones(2)},  # "ln" as its own token -> excluded
        "vulnerable": {"kernel": jnp.ones(2)},  # contains "ln" inside a word -> decayed
    }


def test_weight_decay_mask_tree():
    mask = weight_decay_mask(_params())
    expected = {
        "encoder": {
            "layer_0": {
                "attention": {"query": {"kernel": True, "bias": False}},
                "attention_output_LayerNorm": {"scale": False, "bias": False},
                "ffn_layer_norm": {"gamma": False},
                "ln_1": {"weight": False},
                "mlp": {"kernel": True},
            },
            "embeddings": {"word": {"embedding": True}},
        },
        "LayerNorm_0": {"scale": False, "bias": False},
        "RMSNorm_0": {"scale": False},
        "head": {"kernel": True, "bias": False},
        "kernel_ln": {"kernel": False},
        "vulnerable": {"kernel": True},
    }
    assert mask == expected


def test_adamw_decays_only_masked_leaves_and_clips():
    params = {"dense": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}}
    tx = make_optimizer(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    state = tx.init(params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    # zero gradient: only decoupled weight decay moves the kernel (-lr * wd * p), bias untouched
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)
    # clipping: the first Adam step is invariant to gradient scale, so check the clip itself
    tx_clip = make_optimizer(learning_rate=0.1, schedule="constant", weight_decay=0.0, clip_norm=1.0)
    big = {"dense": {"kernel": jnp.full((2,), 30.0), "bias": jnp.full((2,), 40.0)}}
    clip_state = tx_clip.init(params)
    _, new_state = tx_clip.update(big, clip_state, params)
    mu = new_state[1][0].mu  # chain(clip, adamw(...)) -> adamw's ScaleByAdamState
    norm = optax.tree.norm(jax.tree_util.tree_map(lambda m: m / (1 - 0.9), mu))
    assert float(norm) == pytest.approx(1.0, rel=1e-5)


def test_lr_multipliers_scale_matching_leaves_exactly():
    """A factor m on a path equals AdamW with learning rate m * lr for that leaf (hand-computed
    first Adam step: update = -lr * (sign(g) + wd * p)), others keep lr; first matching rule wins."""
    params = {"encoder": {"kernel": jnp.full((3,), 1.0)}, "head": {"classifier": {"kernel": jnp.full((3,), 1.0),
                                                                                 "bias": jnp.zeros((3,))}}}
    grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.5), params)
    tx = make_optimizer(learning_rate=0.01, schedule="constant", weight_decay=0.1, clip_norm=None, eps=0.0,
                        lr_multipliers={"head/classifier/bias": 3.0, "head": 20.0})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["kernel"], -0.01 * (1.0 + 0.1 * 1.0), rtol=1e-5)
    np.testing.assert_allclose(updates["head"]["classifier"]["kernel"], -0.2 * (1.0 + 0.1 * 1.0), rtol=1e-5)
    np.testing.assert_allclose(updates["head"]["classifier"]["bias"], -0.03 * 1.0, rtol=1e-5)  # no decay on bias


def test_train_config_reads_lr_multipliers_and_names_bad_values():
    from pile_jax.config import ConfigError
    from pile_jax.train.loop import TrainConfig

    assert TrainConfig.from_config({"lr_multipliers": {"head": "20"}}).lr_multipliers == {"head": 20.0}
    with pytest.raises(ConfigError, match="train.lr_multipliers"):
        TrainConfig.from_config({"lr_multipliers": [1, 2]})
    with pytest.raises(ConfigError, match="train.lr_multipliers"):
        TrainConfig.from_config({"lr_multipliers": {"head(": 2.0}})


def test_train_config_every_field_round_trips_its_default():
    import dataclasses

    from pile_jax.train.loop import TrainConfig

    assert TrainConfig.from_config(None) == TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        got = getattr(TrainConfig.from_config({f.name: default}), f.name)
        assert got == default and type(got) is type(default), f.name
    everything = {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig.from_config(everything) == TrainConfig()


@pytest.mark.parametrize("key,value,expected", [
    ("learning_rate", "1e-4", 1e-4),        # YAML 1.1 reads 1e-4 (no dot) as a string
    ("learning_rate", 3, 3.0),
    ("batch_size", 2.0, 2),                 # an integral float is an int
    ("batch_size", "16", 16),
    ("steps", None, None),                  # int | None takes null
    ("steps", 5.0, 5),
    ("warmup_steps", 0.25, 0.25),           # int | float: a fraction ...
    ("warmup_steps", 100, 100),             # ... or a step count
    ("warmup_steps", "1e2", 100.0),
    ("progress", False, False),
    ("schedule", "cosine", "cosine"),
    ("lr_multipliers", None, None),
    ("lr_multipliers", {"head": 20, "encoder/layer_0": "0.5"}, {"head": 20.0, "encoder/layer_0": 0.5}),
])
def test_train_config_coerces_values_to_the_field_types(key, value, expected):
    from pile_jax.train.loop import TrainConfig

    got = getattr(TrainConfig.from_config({key: value}), key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key,value,expected_type", [
    ("batch_size", 2.5, "int"),             # not integral
    ("batch_size", True, "int"),            # a bool is not a number here
    ("learning_rate", False, "float"),
    ("learning_rate", "fast", "float"),
    ("seed", None, "int"),                  # not nullable
    ("steps", float("inf"), "int | None"),
    ("eval_every", "x", "int | None"),
    ("warmup_steps", True, "int | float"),
    ("progress", 1, "bool"),
    ("progress", "yes", "bool"),
    ("lr_multipliers", {"head": "big"}, "dict[str, float] | None"),
])
def test_train_config_bad_value_names_the_key_and_type(key, value, expected_type):
    import re

    from pile_jax.config import ConfigError
    from pile_jax.train.loop import TrainConfig

    with pytest.raises(ConfigError, match="^" + re.escape(f"train.{key}: expected {expected_type}, got {value!r} (")):
        TrainConfig.from_config({key: value})
