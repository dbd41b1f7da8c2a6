"""Test-wide JAX settings.

Eight fake CPU devices so the multi-device paths (mesh, pmap, fsdp) really run on a laptop or CI
box; strict dtype and rank promotion so that a `[B]` vs `[B, 1]` broadcast or an accidental
float64/int promotion fails loudly instead of silently computing the wrong thing.
"""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
