"""Every catalogue term (CC, FSP, FT, AB, KDSVD, OFD, SRD, MLKD) trains a tiny zoo pair.

A resnet8 teacher and a resnet8 student (different initialisations; equal stage widths, so FSP
and KDSVD apply) at 8x8 inputs with 10 classes and batch 4. Each term is built from its config
kind (OFD and SRD given the teacher as ``teacher_model``, as the run does), and all eight run in
one objective through two jitted ``distill_step`` calls (one compilation): finite loss, every
term's value reported and finite, the student and every term's adapters move. Compiling the
ResNet pair's training step costs more than a minute of CPU, so that test and its per-kind
version are marked slow; the fast test runs the same objective on stand-in features of the
pair's shapes.
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import models, objectives
from kdjax.models import Outputs

TAPS = ("stage1", "stage2", "stage3", "stage2/block_0/bn2", "stage3/block_0/bn2", "pre_logits")
PRE = ("stage2/block_0/bn2", "stage3/block_0/bn2")  # pre-ReLU (BatchNorm outputs)
KW = dict(num_classes=10, input_shape=(8, 8, 3), taps=TAPS)


@functools.cache
def _pair():
  return (models.create("resnet8", rng=jax.random.key(0), **KW),
          models.create("resnet8", rng=jax.random.key(1), **KW))

KINDS = {
    "correlation_congruence": {"feat_dim": 8},
    "fsp": {"student": ("stage1", "stage2", "stage3"), "teacher": ("stage1", "stage2", "stage3")},
    "factor_transfer": {"student": "stage3", "teacher": "stage3", "paraphraser_steps": 1},
    "activation_boundary": {"student": PRE, "teacher": PRE},
    "kdsvd": {"student": ("stage2", "stage3"), "teacher": ("stage2", "stage3")},
    "ofd": {"student": PRE, "teacher": PRE},
    "srd": {},
    "mlkd": {"views": 2},
}


def _build(kind, teacher_model):
  spec = objectives.term_kinds()[kind]
  kwargs = dict(KINDS[kind])
  if "teacher_model" in spec.dataset_args:
    kwargs["teacher_model"] = teacher_model
  return spec.ctor(**kwargs)


def _stand_in_teacher():
  """What OFD and SRD read of a trained teacher: its BatchNorm parameters and its head."""
  rng = np.random.default_rng(5)
  bn = lambda c: {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 1, c)}  # noqa: E731
  params = {"stage2": {"block_0": {"bn2": bn(32)}}, "stage3": {"block_0": {"bn2": bn(64)}},
            "head": {"kernel": rng.standard_normal((64, 10)), "bias": np.zeros(10)}}
  return types.SimpleNamespace(params=params)


def _train(kinds):
  teacher, student = _pair()
  objective = objectives.combine({"ce": objectives.cross_entropy(),
                                  **{k: _build(k, teacher) for k in kinds}})
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((4, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 4).astype(np.int32)}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(0.05), rng=jax.random.key(2),
                                    example_batch=batch)
  before = jax.tree.map(np.asarray, state.params)
  step = jax.jit(kdjax.distill_step)
  for _ in range(2):
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])), metrics
    for k in kinds:
      assert np.isfinite(float(metrics[k])), (k, metrics[k])

  def moved(tree, ref):
    return max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), tree, ref)), default=1.0)

  assert moved(state.params["student"], before["student"]) > 0
  for k in kinds:
    if jax.tree.leaves(before["objective"][k]):
      assert moved(state.params["objective"][k], before["objective"][k]) > 0, k
  return metrics


def _outputs(seed, batch=4):
  rng = np.random.default_rng(seed)
  f = lambda *shape: jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)  # noqa: E731
  features = {"stage1": f(8, 8, 16), "stage2": f(4, 4, 32), "stage3": f(2, 2, 64),
              "stage2/block_0/bn2": f(4, 4, 32), "stage3/block_0/bn2": f(2, 2, 64),
              "pre_logits": f(64)}
  return Outputs(f(10), features)


def test_every_catalogue_kind_trains_its_adapters_and_the_student_features():
  """The fast check: the objective on stand-in features of the zoo pair's shapes, one jit."""
  objective = objectives.combine({k: _build(k, _stand_in_teacher()) for k in KINDS})
  s_out, t_out = _outputs(0), _outputs(1)
  batch = {"label": np.arange(4, dtype=np.int32)}
  params, state = objective.init(jax.random.key(0), s_out, t_out, batch)

  @jax.jit
  def grads(params, state, s_out, step):
    def loss(params, s_out):
      value, new_state, metrics = objective.apply(params, state, s_out, t_out, batch, step)
      return value, (new_state, metrics)
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, s_out)

  for step in (0, 1):  # FT: paraphraser pre-training, then transfer
    (value, (state, metrics)), (g_params, g_out) = grads(params, state, s_out, step)
    assert np.isfinite(float(value)) and set(KINDS) <= set(metrics)
    for k in KINDS:
      assert np.isfinite(float(metrics[k])), k
      for leaf in jax.tree.leaves(g_params[k]):
        assert np.all(np.isfinite(np.asarray(leaf))), k
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g_out))
    ft = g_params["factor_transfer"]
    para = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ft["paraphraser"]))
    trans = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ft["translator"]))
    # Pre-training moves only the paraphraser; afterwards only the translator.
    assert (para > 0, trans > 0) == ((True, False) if step == 0 else (False, True))
  assert float(jnp.max(jnp.abs(g_out.logits))) > 0  # MLKD and SRD reach the logits


@pytest.mark.slow
def test_every_catalogue_kind_in_one_objective_through_distill_step():
  metrics = _train(tuple(KINDS))
  assert set(KINDS) <= set(metrics)
  # FT's first step is the paraphraser's pre-training (its reconstruction is the term's value).
  assert "factor_transfer/reconstruction" in metrics
