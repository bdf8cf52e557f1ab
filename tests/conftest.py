"""Shared pytest setup.

Four host (CPU) devices for the pmap / sharding tests: XLA reads this flag once, when jax
initialises, so it must be set here, before any test module imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=4"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
