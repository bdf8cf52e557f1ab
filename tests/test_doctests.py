"""The usage examples in the docstrings of the public losses, metrics and ensembles (standalone,
masked with ``where=``, ``jax.vmap`` / batched) run as written and print what they show."""

import doctest
import importlib

import pytest

MODULES = ("pile_jax.losses", "pile_jax.metrics", "pile_jax.ensemble", "pile_jax.data.trec")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no examples"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_every_public_loss_metric_and_ensemble_has_examples():
    from pile_jax import ensemble, losses, metrics

    names = [(losses, n) for n in losses.__all__ if n.islower()] + [
        (metrics, n) for n in metrics.__all__ if n.islower() and n != "get_metric"] + [
        (ensemble, n) for n in ensemble.__all__ if n.islower() and "report" not in n]
    missing = [f"{m.__name__}.{n}" for m, n in names
               if n not in ("get_loss", "get_loss_spec") and ">>> " not in (getattr(m, n).__doc__ or "")]
    assert not missing, missing
