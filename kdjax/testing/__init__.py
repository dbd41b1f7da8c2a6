"""A chex-based kit for testing distillation losses, yours or kdjax's.

:class:`LossTestCase` turns a declaration of a loss's properties into tests; the ``assert_*``
helpers check one property each and can be called from any test. See ``docs/testing.md``.
"""
from kdjax.testing._case import MAX_PMAP_DEVICES
from kdjax.testing._case import LossTestCase
from kdjax.testing._checks import assert_finite
from kdjax.testing._checks import assert_float32_math
from kdjax.testing._checks import assert_gradients
from kdjax.testing._checks import assert_logit_shift_invariant
from kdjax.testing._checks import assert_matches_reference
from kdjax.testing._checks import assert_no_teacher_gradient
from kdjax.testing._checks import assert_per_example
from kdjax.testing._checks import assert_permutation_equivariant
from kdjax.testing._checks import assert_zero_at_teacher

__all__ = (
    "LossTestCase",
    "MAX_PMAP_DEVICES",
    "assert_finite",
    "assert_float32_math",
    "assert_gradients",
    "assert_logit_shift_invariant",
    "assert_matches_reference",
    "assert_no_teacher_gradient",
    "assert_per_example",
    "assert_permutation_equivariant",
    "assert_zero_at_teacher",
)
