"""kdjax.models.from_pytorch against PyTorch itself.

The PyTorch networks below are written here from each architecture's description (the CIFAR
models of RepDistiller / mdistiller: their layer order, strides and module names, which are the
checkpoint format), given random weights and random BatchNorm statistics, saved in each of the
file layouts those code bases write, read back with from_pytorch, and compared on the same
images: eval-mode logits must agree within 1e-4.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

CLASSES = 7


# PyTorch networks, named as the published checkpoints name their tensors -----------------------


def conv(cin, cout, k, stride=1, groups=1, bias=False):
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


class ResBlock(nn.Module):
  """Basic block; a 1x1 conv + BN 'downsample' where the shape changes."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
    self.conv2, self.bn2 = conv(cout, cout, 3), nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
  def __init__(self, depth, widths, classes):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1, self.bn1 = conv(3, widths[0], 3), nn.BatchNorm2d(widths[0])
    cin = widths[0]
    for s, w in enumerate(widths[1:]):
      blocks = []
      for j in range(n):
        blocks.append(ResBlock(cin, w, (1 if s == 0 else 2) if j == 0 else 1))
        cin = w
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(widths[-1], classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean((2, 3)))


class Bottleneck(nn.Module):
  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != 4 * planes:
      self.shortcut = nn.Sequential(conv(cin, 4 * planes, 1, stride), nn.BatchNorm2d(4 * planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet50(nn.Module):
  def __init__(self, classes):
    super().__init__()
    self.conv1, self.bn1 = conv(3, 64, 3), nn.BatchNorm2d(64)
    cin = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      blocks = []
      for j in range(n):
        blocks.append(Bottleneck(cin, planes, (1 if s == 0 else 2) if j == 0 else 1))
        cin = 4 * planes
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.linear = nn.Linear(2048, classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.linear(x.mean((2, 3)))


class WideBlock(nn.Module):
  """Pre-activation; the 1x1 'convShortcut' reads the activated input."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, cout, 3, stride)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv(cout, cout, 3)
    self.convShortcut = None if cin == cout else conv(cin, cout, 1, stride)  # pylint: disable=invalid-name

  def forward(self, x):
    a = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(a))))
    return y + (x if self.convShortcut is None else self.convShortcut(a))


class Group(nn.Module):
  def __init__(self, blocks):
    super().__init__()
    self.layer = nn.Sequential(*blocks)

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth, k, classes):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = conv(3, 16, 3)
    cin = 16
    for s, (w, stride) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2))):
      blocks = [WideBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
      cin = w
      setattr(self, f"block{s + 1}", Group(blocks))
    self.bn1 = nn.BatchNorm2d(64 * k)
    self.fc = nn.Linear(64 * k, classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(F.relu(self.bn1(x)).mean((2, 3)))


VGG_GROUPS = {8: ((64,), (128,), (256,), (512,), (512,)),
              13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))}


class VGG(nn.Module):
  """block{g}: [conv(bias), BN, ReLU]* without the last ReLU; max pool after groups 0-2."""

  def __init__(self, depth, classes):
    super().__init__()
    cin = 3
    for g, widths in enumerate(VGG_GROUPS[depth]):
      layers = []
      for w in widths:
        layers += [conv(cin, w, 3, bias=True), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
      setattr(self, f"block{g}", nn.Sequential(*layers[:-1]))
    self.classifier = nn.Linear(512, classes)

  def forward(self, x):
    for g in range(5):
      x = F.relu(getattr(self, f"block{g}")(x))
      if g < 3:
        x = F.max_pool2d(x, 2)
    return self.classifier(x.mean((2, 3)))


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, t):
    super().__init__()
    h = cin * t
    self.residual = stride == 1 and cin == cout
    self.conv = nn.Sequential(conv(cin, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                              conv(h, h, 3, stride, groups=h), nn.BatchNorm2d(h), nn.ReLU(),
                              conv(h, cout, 1), nn.BatchNorm2d(cout))

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class MobileHalf(nn.Module):
  """MobileNetV2 with expansion 6 and width 0.5 (RepDistiller's mobile_half)."""

  def __init__(self, classes):
    super().__init__()
    self.conv1 = nn.Sequential(conv(3, 16, 3, 2), nn.BatchNorm2d(16), nn.ReLU())
    cin, blocks = 16, []
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
      layers = []
      for j in range(n):
        layers.append(InvertedResidual(cin, c // 2, s if j == 0 else 1, t))
        cin = c // 2
      blocks.append(nn.Sequential(*layers))
    self.blocks = nn.ModuleList(blocks)
    self.conv2 = nn.Sequential(conv(cin, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU())
    self.classifier = nn.Sequential(nn.Linear(1280, classes))

  def forward(self, x):
    x = self.conv1(x)
    for b in self.blocks:
      x = b(x)
    return self.classifier(self.conv2(x).mean((2, 3)))


def shuffle(x, g):
  n, c, h, w = x.shape
  return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
  def __init__(self, cin, cout, stride, groups):
    super().__init__()
    branch = cout - cin if stride == 2 else cout
    mid = branch // 4
    self.g = 1 if cin == 24 else groups
    self.stride = stride
    self.conv1, self.bn1 = conv(cin, mid, 1, groups=self.g), nn.BatchNorm2d(mid)
    self.conv2, self.bn2 = conv(mid, mid, 3, stride, groups=mid), nn.BatchNorm2d(mid)
    self.conv3, self.bn3 = conv(mid, branch, 1, groups=groups), nn.BatchNorm2d(branch)

  def forward(self, x):
    y = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    if self.stride == 2:
      return F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1))
    return F.relu(y + x)


class ShuffleNet(nn.Module):
  """What both ShuffleNets share: the stem ``conv1``/``bn1`` (24 channels) and the stages
  ``layer1..3``, stage ``s`` holding the units ``stage(cin, widths[s], s)``."""

  def __init__(self, widths, stage):
    super().__init__()
    self.conv1, self.bn1 = conv(3, 24, 1), nn.BatchNorm2d(24)
    cin = 24
    for s, w in enumerate(widths):
      setattr(self, f"layer{s + 1}", nn.Sequential(*stage(cin, w, s)))
      cin = w

  def stages(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    return self.layer3(self.layer2(self.layer1(x)))


class ShuffleNetV1(ShuffleNet):
  def __init__(self, classes):
    counts = (4, 8, 4)
    super().__init__((240, 480, 960), lambda cin, w, s: [
        ShuffleV1Unit(cin if j == 0 else w, w, 2 if j == 0 else 1, 3) for j in range(counts[s])])
    self.linear = nn.Linear(960, classes)

  def forward(self, x):
    return self.linear(self.stages(x).mean((2, 3)))


class V2Down(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    mid = cout // 2
    self.conv1, self.bn1 = conv(cin, cin, 3, 2, groups=cin), nn.BatchNorm2d(cin)
    self.conv2, self.bn2 = conv(cin, mid, 1), nn.BatchNorm2d(mid)
    self.conv3, self.bn3 = conv(cin, mid, 1), nn.BatchNorm2d(mid)
    self.conv4, self.bn4 = conv(mid, mid, 3, 2, groups=mid), nn.BatchNorm2d(mid)
    self.conv5, self.bn5 = conv(mid, mid, 1), nn.BatchNorm2d(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = F.relu(self.bn3(self.conv3(x)))
    right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
    return shuffle(torch.cat([left, right], 1), 2)


class V2Basic(nn.Module):
  def __init__(self, c):
    super().__init__()
    h = c // 2
    self.conv1, self.bn1 = conv(h, h, 1), nn.BatchNorm2d(h)
    self.conv2, self.bn2 = conv(h, h, 3, groups=h), nn.BatchNorm2d(h)
    self.conv3, self.bn3 = conv(h, h, 1), nn.BatchNorm2d(h)

  def forward(self, x):
    h = x.shape[1] // 2
    y = F.relu(self.bn1(self.conv1(x[:, h:])))
    y = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(y)))))
    return shuffle(torch.cat([x[:, :h], y], 1), 2)


class ShuffleNetV2(ShuffleNet):
  def __init__(self, classes):
    counts = (3, 7, 3)
    super().__init__((116, 232, 464), lambda cin, w, s: [
        V2Down(cin, w), *[V2Basic(w) for _ in range(counts[s])]])
    self.conv2, self.bn2 = conv(464, 1024, 1), nn.BatchNorm2d(1024)
    self.linear = nn.Linear(1024, classes)

  def forward(self, x):
    return self.linear(F.relu(self.bn2(self.conv2(self.stages(x)))).mean((2, 3)))


NETS = {
    "resnet8": lambda: CifarResNet(8, (16, 16, 32, 64), CLASSES),
    "resnet14": lambda: CifarResNet(14, (16, 16, 32, 64), CLASSES),
    "resnet8x4": lambda: CifarResNet(8, (32, 64, 128, 256), CLASSES),
    "ResNet50": lambda: ResNet50(CLASSES),
    "wrn_16_1": lambda: WideResNet(16, 1, CLASSES),
    "wrn_16_2": lambda: WideResNet(16, 2, CLASSES),
    "vgg8": lambda: VGG(8, CLASSES),
    "vgg13": lambda: VGG(13, CLASSES),
    "MobileNetV2": lambda: MobileHalf(CLASSES),
    "ShuffleV1": lambda: ShuffleNetV1(CLASSES),
    "ShuffleV2": lambda: ShuffleNetV2(CLASSES),
}


def build(name, seed=0):
  """The network with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  net = NETS[name]()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=gen))
        m.bias.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        m.num_batches_tracked.fill_(123)
  return net.eval()


def images(n=2, seed=0):
  return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def torch_logits(net, x):
  with torch.no_grad():
    return net(torch.from_numpy(x)).numpy()


def kdjax_logits(model, x):
  apply = jax.jit(model.apply, static_argnames="train")
  out, _ = apply(model.params, model.model_state, x.transpose(0, 2, 3, 1), train=False, rng=None)
  return np.asarray(out.logits)


def assert_logits_close(model, net, x):
  expected = torch_logits(net, x)
  assert np.abs(expected).max() > 1e-2  # the comparison is not between two near-zero outputs
  np.testing.assert_allclose(kdjax_logits(model, x), expected, rtol=1e-4, atol=1e-4)


# Each architecture -------------------------------------------------------------------------------

# The three cheapest families in the fast suite; the rest (larger models, MobileNetV2 and the
# ShuffleNets, the same families again) in the slow one.
FAST = ["resnet14", "wrn_16_2", "vgg8"]
LARGE = ["MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50", "resnet8", "resnet8x4", "wrn_16_1",
         "vgg13"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in LARGE])
def test_logits_match_pytorch(name, tmp_path):
  net = build(name)
  path = os.path.join(tmp_path, f"{name}.pth")
  torch.save({"epoch": 240, "model": net.state_dict(), "accuracy": torch.tensor(71.5)}, path)
  model = models.from_pytorch(name, path, num_classes=CLASSES)
  assert model.name == models._pytorch.ALIASES.get(name, name)  # pylint: disable=protected-access
  assert_logits_close(model, net, images())


# File layouts (one small network) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet8():
  return build("resnet8", seed=3)


def _save(obj, path):
  torch.save(obj, path)
  return path


def _variables(path, part="student"):
  """The file's tensors mapped onto resnet8's variables (no forward pass: cheap)."""
  arrays = models._pytorch.read_state_dict(path, part=part)  # pylint: disable=protected-access
  return models._pytorch.convert_state_dict(  # pylint: disable=protected-access
      arrays, params=RESNET8.params, model_state=RESNET8.model_state, name="resnet8")


RESNET8 = None


def shapes(name, classes=CLASSES):
  """A zoo model's (params, model_state) as shapes only (no compilation)."""
  module = models.get_model(name, num_classes=classes)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return variables["params"], {"batch_stats": variables["batch_stats"]}


@pytest.fixture(scope="module", autouse=True)
def _resnet8_template():
  global RESNET8
  RESNET8 = models.create("resnet8", num_classes=CLASSES, input_shape=(32, 32, 3),
                          rng=jax.random.key(0))


def test_layouts(resnet8, tmp_path):
  sd = resnet8.state_dict()
  bare = _variables(_save(sd, tmp_path / "bare.pth"))
  x = images(seed=1)
  np.testing.assert_allclose(
      kdjax_logits(dataclasses.replace(RESNET8, params=bare[0], model_state=bare[1]), x),
      torch_logits(resnet8, x), rtol=1e-4, atol=1e-4)
  opt = argparse.Namespace(model="resnet8", learning_rate=0.05, lr_decay_epochs=[150, 180, 210])
  other = build("resnet8", seed=4).state_dict()
  files = {
      "repdistiller_last": _save({"opt": opt, "model": sd}, tmp_path / "resnet8_last.pth"),
      "net": _save({"net": sd, "acc": 71.2, "epoch": 3}, tmp_path / "ckpt.pt"),
      "data_parallel": _save({"model": {f"module.{k}": v for k, v in sd.items()}},
                             tmp_path / "dp.pth"),
      "numpy_scalar": _save({"model": sd, "best_acc": np.float64(71.25)}, tmp_path / "np.pth"),
      # mdistiller's training checkpoint: the DataParallel-wrapped distiller's two networks.
      "mdistiller_latest": _save(
          {"epoch": 12, "best_acc": torch.tensor(40.0),
           "model": {**{f"module.student.{k}": v for k, v in sd.items()},
                     **{f"module.teacher.{k}": v for k, v in other.items()}},
           "optimizer": torch.optim.SGD(resnet8.parameters(), lr=0.1,
                                        momentum=0.9).state_dict()},
          tmp_path / "latest"),
  }
  for layout, path in files.items():
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=layout),
                 _variables(path), bare)
  teacher = _variables(files["mdistiller_latest"], part="teacher")
  expected = _variables(_save(other, tmp_path / "other.pth"))
  jax.tree.map(np.testing.assert_array_equal, teacher, expected)
  with pytest.raises(AssertionError):
    np.testing.assert_array_equal(teacher[0]["head"]["kernel"], bare[0]["head"]["kernel"])


def test_gpu_saved_file_loads_on_cpu(resnet8, tmp_path, monkeypatch):
  # Tag every storage as CUDA while saving, as a GPU run writes it; loading it without
  # map_location='cpu' fails on a machine without CUDA.
  monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
  path = _save({"model": resnet8.state_dict()}, tmp_path / "gpu.pth")
  monkeypatch.undo()
  if not torch.cuda.is_available():
    with pytest.raises(RuntimeError, match="CUDA"):
      torch.load(path, weights_only=True)
  jax.tree.map(np.testing.assert_array_equal, _variables(path),
               _variables(_save(resnet8.state_dict(), tmp_path / "cpu.pth")))


class Payload:
  """Unpickling this would run code chosen by whoever wrote the file."""

  def __reduce__(self):
    return (os.system, ("echo should never run",))


def test_code_in_a_checkpoint_is_refused(resnet8, tmp_path):
  path = _save({"model": resnet8.state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match=r"holds a (posix|nt|os)\.system object.*weights_only") as e:
    models.from_pytorch("resnet8", path, num_classes=CLASSES)
  assert "\n" not in str(e.value)


def test_errors(resnet8, tmp_path):
  path = _save({"model": resnet8.state_dict()}, tmp_path / "r8.pth")
  with pytest.raises(ValueError, match=r"fc\.weight: \(7, 64\) in the file.*set num_classes"):
    models.from_pytorch("resnet8", path, num_classes=100)
  params, state = shapes("resnet14")
  with pytest.raises(ValueError, match=r"does not fit the model.*layer1\.1\.conv1\.weight missing"):
    models._pytorch.convert_state_dict(  # pylint: disable=protected-access
        models._pytorch.read_state_dict(path), params=params, model_state=state,  # pylint: disable=protected-access
        name="resnet14")
  with pytest.raises(ValueError, match="no mapping for 'vit_tiny'"):
    models.from_pytorch("vit_tiny", path)
  with pytest.raises(ValueError, match="does not exist"):
    models.from_pytorch("resnet8", tmp_path / "missing.pth")
  (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="cannot read .* as a PyTorch checkpoint"):
    models.from_pytorch("resnet8", tmp_path / "junk.pth")
  _save({"epoch": 3}, tmp_path / "nothing.pth")
  with pytest.raises(ValueError, match="holds no state dict"):
    models.from_pytorch("resnet8", tmp_path / "nothing.pth")
  full = {"model": {f"module.student.{k}": v for k, v in resnet8.state_dict().items()}}
  _save(full, tmp_path / "student_only.pth")
  with pytest.raises(ValueError, match="no 'teacher'"):
    models.from_pytorch("resnet8", tmp_path / "student_only.pth", part="teacher")


def test_load_variables_reads_pth_for_the_run_layer(resnet8, tmp_path):
  """config.teacher.checkpoint=<file>.pth: the run layer's loader maps it onto its model."""
  path = _save({"model": resnet8.state_dict()}, tmp_path / "teacher.pth")
  fresh = RESNET8
  params, state = models.load_variables(path, params=fresh.params, model_state=fresh.model_state)
  model = dataclasses.replace(fresh, params=params, model_state=state)
  x = images(seed=3)
  np.testing.assert_allclose(kdjax_logits(model, x), torch_logits(resnet8, x), rtol=1e-4,
                             atol=1e-4)
  params, state = shapes("wrn_16_1")
  with pytest.raises(ValueError, match="does not fit the model"):
    models.load_variables(path, params=params, model_state=state)
