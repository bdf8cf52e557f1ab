"""pile_jax: distil neural rankers into small, fast students in JAX/Flax."""

__version__ = "0.1.0"
