"""Running the `pile-jax` CLI from tests the way a user would: one CPU device (conftest's
4-device XLA flag removed), a private compilation cache, unbuffered output."""

import os

# Cheap XLA:CPU compilation for tiny runs where compilation dominates (results change only by rounding).
CHEAP_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def user_env(tmp_path, *, cheap_compile: bool = False) -> dict:
    """``os.environ`` for a CLI subprocess: no forced devices, XLA cache under ``tmp_path``."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest forces 4 CPU devices; a user's run has one
    if cheap_compile:
        env["XLA_FLAGS"] = CHEAP_COMPILE_FLAGS
    env["PILE_JAX_CACHE"] = str(tmp_path / "xla_cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env
