"""ReviewKD: the hierarchical context loss against numpy; the fused term trains down."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import losses, models, objectives
from tests import helpers


def _np_pool(x, size):
  b, h, w, c = x.shape
  out = np.zeros((b, size, size, c))
  for i in range(size):
    r0, r1 = int(np.floor(i * h / size)), int(np.ceil((i + 1) * h / size))
    for j in range(size):
      c0, c1 = int(np.floor(j * w / size)), int(np.ceil((j + 1) * w / size))
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def _np_hcl(students, teachers):
  total = 0.0
  for fs, ft in zip(students, teachers):
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    loss, weight, tot = np.mean((fs - ft) ** 2), 1.0, 1.0
    for level in (4, 2, 1):
      if level >= fs.shape[1]:
        continue
      weight /= 2
      loss += weight * np.mean((_np_pool(fs, level) - _np_pool(ft, level)) ** 2)
      tot += weight
    total += loss / tot
  return total


def test_hcl_matches_numpy():
  rng = np.random.default_rng(0)
  shapes = [(2, 8, 8, 3), (2, 6, 6, 2), (2, 4, 4, 3), (2, 1, 1, 5)]
  fs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  ft = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  per_example = jax.jit(losses.hierarchical_context_loss)(fs, ft)
  assert per_example.shape == (2,)
  np.testing.assert_allclose(np.mean(per_example), _np_hcl(fs, ft), rtol=1e-5)
  np.testing.assert_allclose(losses.adaptive_avg_pool(jnp.asarray(fs[1]), 4),
                             _np_pool(fs[1], 4), rtol=1e-5, atol=1e-6)


class TinyConv(nn.Module):
  """Two tapped conv stages: [B, 4, 4, c1] and [B, 2, 2, c2]."""

  c1: int
  c2: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.c1, (3, 3), name="stage1")(x))
    x = nn.relu(nn.Conv(self.c2, (3, 3), strides=(2, 2), name="stage2")(x))
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def _conv(seed, c1, c2):
  module = TinyConv(c1, c2)
  variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 4, 4, 1), jnp.float32))
  return models.from_linen(module, variables, taps=("stage1", "stage2"))


def test_term_is_hcl_of_the_fused_student_and_trains_down():
  teacher, student = _conv(0, 6, 8), _conv(1, 3, 4)
  x = np.random.default_rng(0).standard_normal((8, 4, 4, 1)).astype(np.float32)
  data = {"image": x, "label": np.zeros(8, np.int32)}
  term = objectives.review_kd(student=("stage1", "stage2"), teacher=("stage1", "stage2"),
                              mid_channels=4)
  s_out, _ = student.apply(student.params, student.model_state, x, train=False, rng=None)
  t_out, _ = teacher.apply(teacher.params, teacher.model_state, x, train=False, rng=None)
  params, state = term.init(jax.random.key(0), s_out, t_out, data)
  assert "attention" in params["abf_0"] and "attention" not in params["abf_1"]
  fusion = objectives.ReviewFusion(4, (6, 8), ((4, 4), (2, 2)))
  fused = fusion.apply({"params": params}, [s_out.features["stage1"], s_out.features["stage2"]])
  assert [f.shape for f in fused] == [(8, 4, 4, 6), (8, 2, 2, 8)]
  loss, _, _ = term.apply(params, state, s_out, t_out, data, jnp.int32(0))
  np.testing.assert_allclose(
      loss, _np_hcl(fused, [t_out.features["stage1"], t_out.features["stage2"]]), rtol=1e-5)

  _, history = helpers.distill(student, teacher, objectives.combine({"review": term}), data,
                               tx=optax.sgd(0.05, momentum=0.9), steps=30, metric="review")
  assert np.all(np.isfinite(history))
  assert history[-1] < 0.7 * history[0], history
