"""The model zoo: parameter counts against the reference code and the literature, dtypes, shapes."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models
from kdjax.models.zoo import _counts
from kdjax.models.zoo import _registry

# --- Reference counts, written from the PyTorch definitions (RepDistiller / CRD `models/`) ---


def _conv(cin, cout, k, groups=1, bias=False):
  return k * k * (cin // groups) * cout + (cout if bias else 0)


def _bn(c):
  return 2 * c  # weight and bias; running statistics are not parameters


def _linear(cin, cout):
  return cin * cout + cout


def _resnet(depth, widths, classes):
  n = (depth - 2) // 6
  total, cin = _conv(3, widths[0], 3) + _bn(widths[0]), widths[0]
  for s, w in enumerate(widths[1:]):
    for j in range(n):
      stride = 2 if s > 0 and j == 0 else 1
      total += _conv(cin, w, 3) + _bn(w) + _conv(w, w, 3) + _bn(w)
      if stride != 1 or cin != w:
        total += _conv(cin, w, 1) + _bn(w)
      cin = w
  return total + _linear(cin, classes)


def _resnet50(classes):
  total, cin = _conv(3, 64, 3) + _bn(64), 64
  for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for j in range(blocks):
      s = stride if j == 0 else 1
      total += (_conv(cin, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
                + _conv(planes, 4 * planes, 1) + _bn(4 * planes))
      if s != 1 or cin != 4 * planes:
        total += _conv(cin, 4 * planes, 1) + _bn(4 * planes)
      cin = 4 * planes
  return total + _linear(2048, classes)


def _wrn(depth, k, classes):
  n = (depth - 4) // 6
  ch = (16, 16 * k, 32 * k, 64 * k)
  total = _conv(3, 16, 3)
  for s in range(3):
    for j in range(n):
      cin, cout = (ch[s] if j == 0 else ch[s + 1]), ch[s + 1]
      total += _bn(cin) + _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3)
      if cin != cout:
        total += _conv(cin, cout, 1)
  return total + _bn(ch[3]) + _linear(ch[3], classes)


_VGG = {8: [[64], [128], [256], [512], [512]],
        13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


def _vgg(depth, classes):
  total, cin = 0, 3
  for group in _VGG[depth]:
    for v in group:
      total += _conv(cin, v, 3, bias=True) + _bn(v)
      cin = v
  return total + _linear(512, classes)


def _mobile_half(classes, t_expand=6, width=0.5):
  cin = int(32 * width)
  total = _conv(3, cin, 3) + _bn(cin)
  setting = [[1, 16, 1, 1], [t_expand, 24, 2, 1], [t_expand, 32, 3, 2], [t_expand, 64, 4, 2],
             [t_expand, 96, 3, 1], [t_expand, 160, 3, 2], [t_expand, 320, 1, 1]]
  for t, c, n, _ in setting:
    cout = int(c * width)
    for _ in range(n):
      hid = cin * t
      total += (_conv(cin, hid, 1) + _bn(hid) + _conv(hid, hid, 3, groups=hid) + _bn(hid)
                + _conv(hid, cout, 1) + _bn(cout))
      cin = cout
  return total + _conv(cin, 1280, 1) + _bn(1280) + _linear(1280, classes)


def _shufflev1(classes):
  total, cin = _conv(3, 24, 1) + _bn(24), 24
  for out_planes, blocks in ((240, 4), (480, 8), (960, 4)):
    for i in range(blocks):
      out = out_planes - (cin if i == 0 else 0)
      mid, g = int(out / 4), (1 if cin == 24 else 3)
      total += (_conv(cin, mid, 1, groups=g) + _bn(mid) + _conv(mid, mid, 3, groups=mid)
                + _bn(mid) + _conv(mid, out, 1, groups=3) + _bn(out))
      cin = out_planes
  return total + _linear(960, classes)


def _shufflev2(classes):
  total, cin = _conv(3, 24, 1) + _bn(24), 24
  for out, blocks in ((116, 3), (232, 7), (464, 3)):
    mid = out // 2
    total += (_conv(cin, cin, 3, groups=cin) + _bn(cin) + _conv(cin, mid, 1) + _bn(mid)
              + _conv(cin, mid, 1) + _bn(mid) + _conv(mid, mid, 3, groups=mid) + _bn(mid)
              + _conv(mid, mid, 1) + _bn(mid))
    for _ in range(blocks):
      c = out // 2
      total += _conv(c, c, 1) + _bn(c) + _conv(c, c, 3, groups=c) + _bn(c) + _conv(c, c, 1) + _bn(c)
    cin = out
  return total + _conv(464, 1024, 1) + _bn(1024) + _linear(1024, classes)


REFERENCE = {
    **{f"resnet{d}": (lambda c, d=d: _resnet(d, (16, 16, 32, 64), c))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda c: _resnet(8, (32, 64, 128, 256), c),
    "resnet32x4": lambda c: _resnet(32, (32, 64, 128, 256), c),
    "resnet50": _resnet50,
    **{f"wrn_{d}_{k}": (lambda c, d=d, k=k: _wrn(d, k, c))
       for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    "vgg8": lambda c: _vgg(8, c),
    "vgg13": lambda c: _vgg(13, c),
    "mobilenetv2": _mobile_half,
    "shufflenetv1": _shufflev1,
    "shufflenetv2": _shufflev2,
}

# The literature prints resnet14 as 0.17M; its reference definition (6n+2 = 14, widths
# 16/16/32/64) has 181,108 parameters at 100 classes (0.18M), which the exact check pins down.
_LITERATURE_MISPRINTS = {"resnet14"}


def test_every_published_model_has_a_reference_count():
  assert set(REFERENCE) == set(_counts.PUBLISHED)


@pytest.mark.parametrize("name", sorted(_counts.PUBLISHED))
def test_param_count_matches_reference_code_and_literature(name):
  n = _counts.count(name, num_classes=100)
  assert n == REFERENCE[name](100)
  # The tables print two decimals, some truncated and some rounded: allow 2% or 0.01M.
  published = _counts.PUBLISHED[name] * 1e6
  if name not in _LITERATURE_MISPRINTS:
    assert abs(n - published) <= max(0.02 * published, 0.01e6), (n, published)
  else:
    assert abs(n - published) > 0.01e6


def test_param_count_follows_num_classes():
  assert _counts.count("resnet8", num_classes=10) == REFERENCE["resnet8"](10)


# --- Every model traces (no compute) in bfloat16, in training mode, with its documented taps ---

_SMALL_KWARGS = {"transformer_lm": {"max_len": 16}}


@pytest.mark.parametrize("name", sorted(_registry.MODELS))  # Linen modules (not FACTORIES)
def test_traces_in_bfloat16_with_float32_logits_params_and_documented_taps(name):
  module = models.get_model(name, num_classes=10, dtype=jnp.bfloat16, **_SMALL_KWARGS.get(name, {}))
  x = _counts.example_input(name, batch=2)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  taps = _counts.MAIN_TAPS[name]
  model = models.from_linen(module, variables, taps=taps, example_input=x)  # checks the taps
  out, state = jax.eval_shape(
      lambda p, s, x: model.apply(p, s, x, train=True, rng=jax.random.key(0)),
      model.params, model.model_state, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert out.logits.dtype == jnp.float32
  assert out.logits.shape == (*x.shape[:2], 10) if name == "transformer_lm" else (2, 10)
  assert set(out.features) == set(taps)
  pre = out.features["pre_logits"]
  assert pre.dtype == jnp.bfloat16
  assert pre.shape[0] == 2 and pre.ndim == (3 if name == "transformer_lm" else 2)
  assert jax.tree.structure(state) == jax.tree.structure(model.model_state)


# --- Real forward passes of the small models (compile cost: keep the list short) ---
# Random parameters come from NumPy: initialising through the module would compile each
# initialiser (threefry + truncated normal per tensor), several times the cost of the forward.


def _numpy_variables(module, x, seed=0):
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "var":
      return np.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


_IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)

FORWARD = {
    "resnet8": ({}, {"stage3": (2, 8, 8, 64), "pre_logits": (2, 64)}),
    "wrn_16_1": ({}, {"stage2": (2, 16, 16, 32), "pre_logits": (2, 64)}),
    "vgg8": ({}, {"stem": (2, 32, 32, 64), "stage4": (2, 4, 4, 512), "pre_logits": (2, 512)}),
    "mobilenetv2": ({}, {"stage7": (2, 2, 2, 160), "pre_logits": (2, 1280)}),
    "shufflenetv1": ({}, {"stage1": (2, 16, 16, 240), "stage3": (2, 4, 4, 960)}),
    "shufflenetv2": ({}, {"stage3": (2, 4, 4, 464), "head_conv": (2, 4, 4, 1024)}),
    "vit_tiny": ({"dim": 24, "depth": 2, "num_heads": 2},
                 {"stem": (2, 8, 8, 24), "blocks_1/attn_probs": (2, 2, 65, 65),
                  "pre_logits": (2, 24)}),
}


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_shapes_and_batch_stats(name):
  kwargs, expected = FORWARD[name]
  module = models.get_model(name, num_classes=7, **kwargs)
  model = models.from_linen(module, _numpy_variables(module, _IMAGES), taps=tuple(expected))
  out, state = jax.jit(lambda p, s, x: model.apply(p, s, x, train=True, rng=jax.random.key(1)))(
      model.params, model.model_state, _IMAGES)
  assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
  assert {k: v.shape for k, v in out.features.items()} == expected
  assert np.isfinite(np.asarray(out.logits)).all()
  if model.model_state:  # BatchNorm models: training moves the running statistics
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, model.model_state)
    assert all(jax.tree.leaves(moved))


def test_transformer_lm_is_causal_and_taps_attention():
  model = models.create("transformer_lm", num_classes=11, input_shape=(6,), rng=jax.random.key(0),
                        taps=("blocks_0/attn", "blocks_0/attn_probs", "pre_logits"),
                        d_model=16, n_layers=1, n_heads=2, max_len=8, dropout_rate=0.0)
  tokens = np.array([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9]], np.int32)
  out, _ = jax.jit(lambda p, x: model.apply(p, {}, x, train=False, rng=None))(model.params, tokens)
  assert out.logits.shape == (2, 6, 11) and out.logits.dtype == jnp.float32
  assert out.features["blocks_0/attn"].shape == (2, 6, 16)
  assert out.features["pre_logits"].shape == (2, 6, 16)
  probs = np.asarray(out.features["blocks_0/attn_probs"])
  assert probs.shape == (2, 2, 6, 6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.triu(probs, k=1) == 0)  # no attention to later positions
  # Positions before the first difference cannot see it.
  np.testing.assert_allclose(out.logits[0, :3], out.logits[1, :3], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out.logits[0, 3:], out.logits[1, 3:])


def test_create_initialises_and_bfloat16_keeps_float32_params_and_logits():
  f32 = models.create("cnn_small", num_classes=5, input_shape=(8, 8, 1), rng=jax.random.key(0),
                      taps=("stage2",))
  assert f32.name == "cnn_small" and f32.taps == ("stage2",)
  assert set(f32.model_state) == {"batch_stats"}
  # conv3x3 1->16, 16->32, 32->64 (no bias), three BatchNorms, head 64->5.
  assert models.param_count(f32.params) == 9 * (16 + 16 * 32 + 32 * 64) + 2 * 112 + 64 * 5 + 5
  # The same variables computed in bfloat16.
  bf16 = models.from_linen(models.get_model("cnn_small", num_classes=5, dtype=jnp.bfloat16),
                           {"params": f32.params, **f32.model_state})
  assert {leaf.dtype for leaf in jax.tree.leaves((bf16.params, bf16.model_state))} == {
      jnp.dtype(jnp.float32)}
  x = np.random.default_rng(1).standard_normal((4, 8, 8, 1)).astype(np.float32)

  @jax.jit
  def logits(params, state, x):
    high = f32.apply(params, state, x, train=False, rng=None)[0].logits
    low = bf16.apply(params, state, x, train=False, rng=None)[0].logits
    return high, low

  high, low = logits(f32.params, f32.model_state, x)
  assert low.dtype == jnp.float32 and high.dtype == jnp.float32
  np.testing.assert_allclose(low, high, rtol=0.05, atol=0.05)  # bfloat16 rounding only
  assert not np.array_equal(low, high)  # ... which does happen: the compute really is bfloat16


@pytest.mark.parametrize("name", sorted(_registry.MODELS))  # Linen modules (not FACTORIES)
def test_every_model_takes_the_common_arguments(name):
  module = models.get_model(name, num_classes=3, dtype=jnp.bfloat16, bn_axis_name="batch")
  assert (module.num_classes, module.dtype, module.bn_axis_name) == (3, jnp.bfloat16, "batch")


def test_bn_axis_name_gives_pmap_the_global_batch_statistics():
  n = jax.device_count()
  x = np.random.default_rng(2).standard_normal((n, 6, 6, 1)).astype(np.float32)
  local = models.get_model("cnn_small", num_classes=3, width=4)
  synced = models.get_model("cnn_small", num_classes=3, width=4, bn_axis_name="batch")
  variables = _numpy_variables(local, x)
  ref = models.from_linen(local, variables)
  ref_out, ref_state = jax.jit(lambda p, s, x: ref.apply(p, s, x, train=True, rng=None))(
      ref.params, ref.model_state, x)
  model = models.from_linen(synced, variables)
  out, state = jax.pmap(lambda x: model.apply(model.params, model.model_state, x, train=True,
                                              rng=None), axis_name="batch")(x[:, None])
  np.testing.assert_allclose(out.logits[:, 0], ref_out.logits, rtol=1e-4, atol=1e-5)
  for device in range(n):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[device], state), ref_state, rtol=1e-4,
                                atol=1e-6)
