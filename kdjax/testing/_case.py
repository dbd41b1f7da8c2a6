"""``LossTestCase``: declare a loss and its properties, get its tests."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import chex
import jax
import numpy as np

from kdjax.testing import _checks

MAX_PMAP_DEVICES = 2  # pmap variants broadcast the inputs to this many (fake CPU) devices.


class LossTestCase(chex.TestCase):
  """A ``chex.TestCase`` that tests a distillation loss from a declaration of its properties.

  Subclass it, set ``loss_fn`` and ``example_args``, state the properties your loss has, and
  the inherited tests check them (a property set to ``False``/``None`` is skipped, with the
  reason in the test report):

  * ``test_variants``: the same values with and without ``jit`` and under ``pmap``
    (``chex.variants``; the pmap variant broadcasts the inputs to at most
    :data:`MAX_PMAP_DEVICES` devices and compares the first device's output);
  * ``test_finite``: finite values and gradients, also on inputs scaled by ``extreme_scale``;
  * ``test_per_example``: changing example ``j`` changes only row ``j`` (``per_example``);
  * ``test_zero_at_teacher``: the loss is 0 when the student equals the teacher (``divergence``);
  * ``test_invariance``: ``'logit_shift'`` (softmax losses) or ``'permutation'`` (relation
    losses over the batch);
  * ``test_no_teacher_gradient``: zero gradient into the teacher (``stops_teacher_gradient``);
  * ``test_float32_math``: bfloat16 inputs give the float32 result (``float32_math``);
  * ``test_reference``: agreement with ``reference``, a float64 numpy transcription;
  * ``test_gradients``: reverse-mode gradients match finite differences.

  Attributes:
    loss_fn: the loss, ``loss_fn(*example_args())``; bind keyword arguments with
      ``functools.partial`` (and wrap it in ``staticmethod``).
    student_argnums, teacher_argnums: positions of the student's and the teacher's arrays.
    batch_argnums: every argument with a leading batch axis (default: student and teacher).
    per_example: the loss returns one value per example (``False`` for batch-level losses).
    divergence: the loss is 0 at the teacher (student argument := teacher argument).
    invariance: ``None``, ``'logit_shift'`` or ``'permutation'``.
    stops_teacher_gradient: the loss applies ``stop_gradient`` to the teacher.
    float32_math: bfloat16 inputs are computed in float32.
    reference: ``reference(*float64 numpy args) -> values`` or ``None``.
    extreme_scale: a factor applied to the float inputs for a second finiteness check
      (``None`` to skip).
    rtol, atol: tolerances of the value comparisons.
  """

  loss_fn: Callable[..., Any] | None = None
  student_argnums: Sequence[int] = (0,)
  teacher_argnums: Sequence[int] = (1,)
  batch_argnums: Sequence[int] | None = None
  per_example: bool = True
  divergence: bool = True
  invariance: str | None = None
  stops_teacher_gradient: bool = False
  float32_math: bool = True
  reference: Callable[..., Any] | None = None
  extreme_scale: float | None = 50.0
  rtol: float = 1e-5
  atol: float = 1e-6
  _jitted_loss = None

  def example_args(self) -> tuple[Any, ...]:
    """The example inputs (numpy or jax arrays), student first by default. Override it."""
    raise NotImplementedError("set example_args() to return the loss's example inputs")

  # Plumbing --------------------------------------------------------------------------------

  def setUp(self):
    super().setUp()
    if inspect.getattr_static(type(self), "loss_fn") is None:
      self.skipTest("LossTestCase itself declares no loss")

  def _declared(self, name: str) -> Any:
    # The class attribute as declared: a staticmethod, a partial, or a plain function (which
    # must not be bound to the test case).
    fn = inspect.getattr_static(type(self), name)
    return fn.__func__ if isinstance(fn, staticmethod) else fn

  @property
  def _raw_loss(self) -> Callable[..., Any]:
    return self._declared("loss_fn")

  @property
  def _loss(self) -> Callable[..., Any]:
    # One jitted loss per test class, shared by its checks: compiling once per input signature
    # instead of dispatching every operation eagerly keeps a case's tests fast.
    cls = type(self)
    if cls.__dict__.get("_jitted_loss") is None:
      cls._jitted_loss = jax.jit(self._raw_loss)
    return cls._jitted_loss

  def _batch_argnums(self):
    if self.batch_argnums is not None:
      return tuple(self.batch_argnums)
    return tuple(self.student_argnums) + tuple(self.teacher_argnums)

  def _float_batch_argnums(self):
    args = self.example_args()
    return tuple(i for i in self._batch_argnums() if _checks._is_float(args[i]))

  # Tests -----------------------------------------------------------------------------------

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_variants(self):
    fn, args = self._raw_loss, self.example_args()
    expected = np.asarray(fn(*args))
    kwargs = {}
    if self.variant.type == chex.ChexVariantType.WITH_PMAP:
      kwargs["n_devices"] = min(MAX_PMAP_DEVICES, jax.local_device_count())
    out = self.variant(fn, **kwargs)(*args)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=self.rtol, atol=self.atol)

  def test_finite(self):
    args = self.example_args()
    _checks.assert_finite(self._loss, args, argnums=self._float_batch_argnums())
    if self.extreme_scale is not None:
      scaled = [np.asarray(a) * np.asarray(self.extreme_scale, np.asarray(a).dtype)
                if i in self._float_batch_argnums() else a for i, a in enumerate(args)]
      _checks.assert_finite(self._loss, scaled, argnums=self._float_batch_argnums())

  def test_per_example(self):
    if not self.per_example:
      self.skipTest("declared batch-level (per_example = False)")
    _checks.assert_per_example(self._loss, self.example_args(),
                               argnums=self._float_batch_argnums(), atol=self.atol)

  def test_zero_at_teacher(self):
    if not self.divergence:
      self.skipTest("not declared a divergence (divergence = False)")
    _checks.assert_zero_at_teacher(self._loss, self.example_args(),
                                   student_argnum=self.student_argnums[0],
                                   teacher_argnum=self.teacher_argnums[0],
                                   atol=max(self.atol, 1e-5))

  def test_invariance(self):
    if self.invariance is None:
      self.skipTest("no invariance declared")
    if self.invariance == "logit_shift":
      _checks.assert_logit_shift_invariant(
          self._loss, self.example_args(),
          argnums=tuple(self.student_argnums) + tuple(self.teacher_argnums),
          rtol=max(self.rtol, 1e-5), atol=max(self.atol, 1e-5))
    elif self.invariance == "permutation":
      _checks.assert_permutation_equivariant(self._loss, self.example_args(),
                                             argnums=self._batch_argnums(),
                                             rtol=max(self.rtol, 1e-5), atol=self.atol)
    else:
      raise ValueError(f"invariance must be None, 'logit_shift' or 'permutation', got "
                       f"{self.invariance!r}")

  def test_no_teacher_gradient(self):
    if not self.stops_teacher_gradient:
      self.skipTest("the teacher stays differentiable (stops_teacher_gradient = False)")
    _checks.assert_no_teacher_gradient(self._loss, self.example_args(),
                                       teacher_argnums=self.teacher_argnums)

  def test_float32_math(self):
    if not self.float32_math:
      self.skipTest("float32_math = False")
    _checks.assert_float32_math(self._loss, self.example_args(),
                                argnums=self._float_batch_argnums(), rtol=1e-5, atol=1e-5)

  def test_reference(self):
    if self._declared("reference") is None:
      self.skipTest("no reference formula given")
    _checks.assert_matches_reference(self._loss, self._declared("reference"), self.example_args(),
                                     rtol=max(self.rtol, 1e-4), atol=self.atol)

  def test_gradients(self):
    _checks.assert_gradients(self._loss, self.example_args(),
                             argnums=tuple(self.student_argnums))
