"""Test-wide setup: 8 fake CPU devices (before jax is imported) and parsed absl flags for grain."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import absl.flags  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
absl.flags.FLAGS.mark_as_parsed()
