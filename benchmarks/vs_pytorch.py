"""kdjax's jitted ``distill_step`` against the same distillation step in PyTorch.

The same step on both sides: teacher forward (inference mode, no gradient), student forward and
backward (BatchNorm statistics updated), ``0.1 * CE + 0.9 * KD`` at ``T = 4`` (scaled by T^2),
SGD with momentum 0.9. PyTorch runs eagerly and, where it works, under ``torch.compile`` (the
student, the teacher and the loss compiled; backward and optimizer as usual). All sides are timed
in interleaved rounds in one process (``--rounds``, each ``--iters`` steps after warm-up); the
median round is reported. Pairs (CIFAR shapes unless noted):

* ``resnet``: resnet32x4 -> resnet8x4, batch 64, 100 classes;
* ``wrn``: wrn_40_2 -> wrn_16_2, batch 64, 100 classes;
* ``mlp``: 784-1200-1200 -> 784-800-800, 10 classes, batch 256;
* ``lm``: Transformer LM, 4 layers d=256 -> 2 layers d=128 (4 heads, vocab 512, 64 tokens,
  batch 32, no dropout), per-token CE + KD.

One JSON line per pair and side: ``ms_per_step``, ``images_per_s`` (``tokens_per_s`` for the LM),
``ratio`` (PyTorch time / kdjax time: above 1 means kdjax is faster), the model FLOPs of the
kdjax step (XLA cost analysis) and the achieved FLOP/s; on a GPU also ``mfu`` (achieved over the
device's dense peak for the dtype), and with ``--bf16`` (default on accelerators) a bfloat16 line
(kdjax compute dtype bfloat16, PyTorch autocast bfloat16).

  pip install -e '.[bench]'          # PyTorch
  python benchmarks/vs_pytorch.py                            # every pair, on the default device
  python benchmarks/vs_pytorch.py --pairs resnet mlp --rounds 5 --iters 5
  python benchmarks/vs_pytorch.py --no-compile               # skip torch.compile
  python benchmarks/vs_pytorch.py --pairs resnet --breakdown  # where kdjax's step time goes
  python benchmarks/vs_pytorch.py --conv_profile              # XLA conv forward vs gradients
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/vs_pytorch.py --pairs resnet --breakdown

``--conv_profile`` times single 3x3 convolutions of resnet8x4's stages (batch 64) on XLA: the
forward, the input gradient and the weight gradient, with their FLOP/s per wall and per CPU
second; ``--breakdown`` times the parts of the kdjax step separately (teacher forward; student forward;
student forward + backward + update without a teacher; the whole step) with their XLA FLOPs and
achieved FLOP/s, then the convolutions of the step's optimized HLO by kind.

Wall-clock times also include what other processes take from the CPU; PyTorch's OpenMP threads
degrade far more than XLA's on a loaded machine. Measure on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import lm, models, objectives

T = 4.0
LR = 0.05
# Dense peak FLOP/s per device kind and dtype (vendor datasheets, no sparsity).
PEAK_FLOPS = {
    ("H100", "float32"): 67e12, ("H100", "bfloat16"): 989e12,
    ("H200", "float32"): 67e12, ("H200", "bfloat16"): 989e12,
    ("A100", "float32"): 19.5e12, ("A100", "bfloat16"): 312e12,
    ("L4", "float32"): 30.3e12, ("L4", "bfloat16"): 121e12,
}

PAIRS = {
    "resnet": dict(teacher=("resnet32x4", {}), student=("resnet8x4", {}), shape=(32, 32, 3),
                   classes=100, batch=64),
    "wrn": dict(teacher=("wrn_40_2", {}), student=("wrn_16_2", {}), shape=(32, 32, 3),
                classes=100, batch=64),
    "mlp": dict(teacher=("mlp", {"hidden": (1200, 1200)}), student=("mlp", {"hidden": (800, 800)}),
                shape=(28, 28, 1), classes=10, batch=256),
    "lm": dict(teacher=("transformer_lm", {"d_model": 256, "n_layers": 4, "n_heads": 4,
                                           "max_len": 64, "dropout_rate": 0.0}),
               student=("transformer_lm", {"d_model": 128, "n_layers": 2, "n_heads": 4,
                                           "max_len": 64, "dropout_rate": 0.0}),
               shape=(64,), classes=512, batch=32),
}


def emit(record):
  print(json.dumps(record), flush=True)


# kdjax ------------------------------------------------------------------------------------------


def kdjax_side(pair, dtype):
  spec = PAIRS[pair]
  is_lm = pair == "lm"
  made = []
  for (name, kwargs), seed in ((spec["teacher"], 0), (spec["student"], 1)):
    made.append(models.create(name, num_classes=spec["classes"], input_shape=spec["shape"],
                              rng=jax.random.key(seed), dtype=dtype, **kwargs))
  teacher, student = made
  rng = np.random.default_rng(0)
  b = spec["batch"]
  if is_lm:
    tokens = rng.integers(0, spec["classes"], (b, spec["shape"][0])).astype(np.int32)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
             "mask": np.ones(tokens.shape, bool)}
    objective = objectives.combine({"ce": (lm.token_cross_entropy_term(), 0.1),
                                    "kd": (lm.token_kd_term(T), 0.9)})
    keys = {"input_key": "tokens", "label_key": "targets"}
  else:
    batch = {"image": rng.random((b, *spec["shape"]), dtype=np.float32),
             "label": rng.integers(0, spec["classes"], b).astype(np.int32)}
    objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                    "kd": (objectives.kd(temperature=T), 0.9)})
    keys = {}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(LR, momentum=0.9), rng=jax.random.key(0),
                                    example_batch=batch, **keys)
  batch = jax.device_put(batch)
  step = jax.jit(kdjax.distill_step, donate_argnums=0)
  flops = None
  try:
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except  # cost analysis is best-effort
    pass
  holder = {"state": state}

  def run(n):
    for _ in range(n):
      holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  return run, flops


# PyTorch ----------------------------------------------------------------------------------------


def torch_models(pair):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = None
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))

  class ResNet(nn.Module):  # kdjax.models.zoo._resnet.ResNet, CIFAR basic blocks
    def __init__(self, depth, widths, classes):
      super().__init__()
      n = (depth - 2) // 6
      self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                nn.BatchNorm2d(widths[0]), nn.ReLU())
      layers, cin = [], widths[0]
      for k, w in enumerate(widths[1:]):
        for j in range(n):
          layers.append(BasicBlock(cin, w, (1 if k == 0 else 2) if j == 0 else 1))
          cin = w
      self.blocks = nn.Sequential(*layers)
      self.head = nn.Linear(cin, classes)

    def forward(self, x):
      return self.head(self.blocks(self.stem(x)).mean((2, 3)))

  class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
      act = F.relu(self.bn1(x))
      y = self.conv2(F.relu(self.bn2(self.conv1(act))))
      return (x if self.shortcut is None else self.shortcut(act)) + y

  class WRN(nn.Module):  # kdjax.models.zoo._wrn.WideResNet
    def __init__(self, depth, k, classes):
      super().__init__()
      n = (depth - 4) // 6
      self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      layers, cin = [], 16
      for w, s in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        for j in range(n):
          layers.append(WideBlock(cin, w, s if j == 0 else 1))
          cin = w
      self.blocks = nn.Sequential(*layers)
      self.bn = nn.BatchNorm2d(cin)
      self.head = nn.Linear(cin, classes)

    def forward(self, x):
      return self.head(F.relu(self.bn(self.blocks(self.stem(x)))).mean((2, 3)))

  class MLP(nn.Module):
    def __init__(self, din, hidden, classes):
      super().__init__()
      dims = (din, *hidden)
      self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
      self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
      x = x.flatten(1)
      for layer in self.layers:
        x = F.relu(layer(x))
      return self.head(x)

  class Block(nn.Module):  # kdjax.models.zoo._transformer.Block, causal
    def __init__(self, d, heads):
      super().__init__()
      self.heads = heads
      self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
      self.qkv, self.attn = nn.Linear(d, 3 * d), nn.Linear(d, d)
      self.mlp_in, self.mlp_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
      b, length, d = x.shape
      q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(
          2, 0, 3, 1, 4)
      ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.attn(ctx.transpose(1, 2).reshape(b, length, d))
      return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)), approximate="tanh"))

  class LM(nn.Module):
    def __init__(self, vocab, d, layers, heads, length):
      super().__init__()
      self.token = nn.Embedding(vocab, d)
      self.position = nn.Parameter(torch.zeros(length, d))
      self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
      self.ln_f = nn.LayerNorm(d, eps=1e-6)
      self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
      x = self.token(tokens) + self.position[: tokens.shape[1]]
      return self.head(self.ln_f(self.blocks(x)))

  spec = PAIRS[pair]
  c = spec["classes"]
  if pair == "resnet":
    return ResNet(32, (32, 64, 128, 256), c), ResNet(8, (32, 64, 128, 256), c)
  if pair == "wrn":
    return WRN(40, 2, c), WRN(16, 2, c)
  if pair == "mlp":
    return MLP(784, (1200, 1200), c), MLP(784, (800, 800), c)
  t, s = spec["teacher"][1], spec["student"][1]
  return (LM(c, t["d_model"], t["n_layers"], t["n_heads"], t["max_len"]),
          LM(c, s["d_model"], s["n_layers"], s["n_heads"], s["max_len"]))


def torch_side(pair, device, compiled, bf16):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  spec = PAIRS[pair]
  teacher, student = (m.to(device) for m in torch_models(pair))
  teacher.eval()
  student.train()
  b = spec["batch"]
  if pair == "lm":
    x = torch.randint(0, spec["classes"], (b, spec["shape"][0]), device=device)
    y = torch.roll(x, -1, 1)
  else:
    h, w, ch = spec["shape"]
    x = torch.rand(b, ch, h, w, device=device)
    y = torch.randint(0, spec["classes"], (b,), device=device)
  opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9)

  def loss_fn(s, t, y):
    s, t = s.float().flatten(0, -2), t.float().flatten(0, -2)
    kd = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                  log_target=True) * T * T
    return 0.1 * F.cross_entropy(s, y.flatten()) + 0.9 * kd

  t_fwd, s_fwd, loss = teacher, student, loss_fn
  if compiled:
    t_fwd, s_fwd, loss = torch.compile(teacher), torch.compile(student), torch.compile(loss_fn)

  def one():
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
      with torch.no_grad():
        t_out = t_fwd(x)
      value = loss(s_fwd(x), t_out, y)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return value

  def run(n):
    for _ in range(n):
      value = one()
    value.item()  # waits for the device

  return run


# Timing -----------------------------------------------------------------------------------------


def bench(pair, args, jax_device, bf16):
  import torch  # pylint: disable=g-import-not-at-top

  dtype = jnp.bfloat16 if bf16 else jnp.float32
  torch_device = "cuda" if jax_device.platform == "gpu" and torch.cuda.is_available() else "cpu"
  sides = {}
  kdjax_run, flops = kdjax_side(pair, dtype)
  sides["kdjax"] = kdjax_run
  sides["torch_eager"] = torch_side(pair, torch_device, False, bf16)
  if args.compile:
    sides["torch_compile"] = torch_side(pair, torch_device, True, bf16)
  times = {name: [] for name in sides}
  for name, run in list(sides.items()):  # warm-up: compilation, autotuning, caches
    try:
      run(args.warmup)
    except Exception as e:  # pylint: disable=broad-except  # e.g. no C++ compiler for inductor
      emit({"pair": pair, "side": name, "skipped": f"{type(e).__name__}: {str(e)[:300]}"})
      del sides[name], times[name]
  for _ in range(args.rounds):
    for name, run in sides.items():
      start = time.perf_counter()
      run(args.iters)
      times[name].append((time.perf_counter() - start) / args.iters)
  spec = PAIRS[pair]
  items = spec["batch"] * (spec["shape"][0] if pair == "lm" else 1)
  unit = "tokens_per_s" if pair == "lm" else "images_per_s"
  kind = jax_device.device_kind
  peak = next((v for (k, d), v in PEAK_FLOPS.items()
               if k in kind and d == ("bfloat16" if bf16 else "float32")), None)
  base = statistics.median(times["kdjax"])
  for name, ts in times.items():
    sec = statistics.median(ts)
    record = {"pair": pair, "teacher": spec["teacher"][0], "student": spec["student"][0],
              "side": name, "device": f"{jax_device.platform}:{kind}",
              "dtype": "bfloat16" if bf16 else "float32", "batch": spec["batch"],
              "ms_per_step": 1e3 * sec, unit: items / sec,
              "ratio": sec / base if name != "kdjax" else 1.0,
              "rounds_ms": [round(1e3 * t, 2) for t in ts]}
    if flops:
      record["model_flops_per_step"] = flops
      record["achieved_tflops"] = flops / sec / 1e12
      if peak and jax_device.platform != "cpu":
        record["mfu"] = flops / sec / peak
    emit(record)


def breakdown(pair, args):
  """Times the parts of kdjax's step (XLA cost analysis for FLOPs) and lists its convolutions."""
  spec = PAIRS[pair]
  made = [models.create(name, num_classes=spec["classes"], input_shape=spec["shape"],
                        rng=jax.random.key(seed), **kwargs)
          for (name, kwargs), seed in ((spec["teacher"], 0), (spec["student"], 1))]
  teacher, student = made
  rng = np.random.default_rng(0)
  b = spec["batch"]
  batch = {"image": rng.random((b, *spec["shape"]), dtype=np.float32),
           "label": rng.integers(0, spec["classes"], b).astype(np.int32)}
  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                  "kd": (objectives.kd(temperature=T), 0.9)})
  ce_only = objectives.cross_entropy()
  tx = optax.sgd(LR, momentum=0.9)
  online = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                     rng=jax.random.key(0), example_batch=batch)
  alone = kdjax.DistillState.create(student=student, teacher=None, objective=ce_only, tx=tx,
                                    rng=jax.random.key(0), example_batch=batch)
  x = jax.device_put(batch["image"])
  parts = {
      "teacher_forward": (jax.jit(lambda p, s, x: teacher.apply(p, s, x, train=False,
                                                                rng=None)[0].logits),
                          (teacher.params, teacher.model_state, x)),
      "student_forward": (jax.jit(lambda p, s, x: student.apply(p, s, x, train=False,
                                                                rng=None)[0].logits),
                          (student.params, student.model_state, x)),
      "student_step_no_teacher": (jax.jit(kdjax.distill_step), (alone, batch)),
      "distill_step": (jax.jit(kdjax.distill_step), (online, batch)),
  }
  for name, (fn, fn_args) in parts.items():
    compiled = fn.lower(*fn_args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    jax.block_until_ready(compiled(*fn_args))
    ts = []
    for _ in range(args.rounds):
      start = time.perf_counter()
      for _ in range(args.iters):
        out = compiled(*fn_args)
      jax.block_until_ready(out)
      ts.append((time.perf_counter() - start) / args.iters)
    sec = statistics.median(ts)
    record = {"pair": pair, "part": name, "batch": b, "ms": 1e3 * sec,
              "gflops": flops / 1e9, "achieved_gflops_per_s": flops / sec / 1e9,
              "rounds_ms": [round(1e3 * t, 1) for t in ts]}
    if name == "distill_step":
      convs = {}
      for line in compiled.as_text().splitlines():
        if " convolution(" in line:
          dims = line.split("dim_labels=")[1].split(",")[0] if "dim_labels=" in line else "?"
          convs[dims] = convs.get(dims, 0) + 1
      record["hlo_convolutions_by_dim_labels"] = convs
    emit(record)


def conv_profile(args):
  """Forward, input-gradient and weight-gradient time of resnet8x4's 3x3 convolutions."""
  b = 64
  for h, c in ((32, 32), (16, 64), (8, 128)):  # the three stages of resnet8x4 on 32x32 inputs
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((b, h, h, c), dtype=np.float32))
    w = jnp.asarray(0.1 * rng.random((3, 3, c, c), dtype=np.float32))
    g = jnp.asarray(rng.random((b, h, h, c), dtype=np.float32))

    def conv(x, w):
      return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fns = {"forward": (jax.jit(conv), (x, w)),
           "input_grad": (jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
                          (x, w, g)),
           "weight_grad": (jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
                           (x, w, g))}
    flops = 2 * b * h * h * c * c * 9
    for name, (fn, fn_args) in fns.items():
      jax.block_until_ready(fn(*fn_args))
      start, cpu = time.perf_counter(), time.process_time()
      for _ in range(args.iters):
        out = fn(*fn_args)
      jax.block_until_ready(out)
      wall = (time.perf_counter() - start) / args.iters
      cpu = (time.process_time() - cpu) / args.iters
      emit({"conv": f"{b}x{h}x{h}x{c} -> {c}, 3x3", "op": name, "ms": 1e3 * wall,
            "cpu_ms": 1e3 * cpu, "gflops_per_s": flops / wall / 1e9,
            "gflops_per_cpu_s": flops / cpu / 1e9})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                      help="also time torch.compile")
  parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                      help="also a bfloat16 line (default: on accelerators only)")
  parser.add_argument("--breakdown", action="store_true",
                      help="time the parts of the kdjax step instead (image pairs)")
  parser.add_argument("--conv_profile", action="store_true",
                      help="time XLA's 3x3 convolutions: forward, input and weight gradients")
  args = parser.parse_args()
  if args.conv_profile:
    emit({"jax": jax.__version__, "device": str(jax.devices()[0]),
          "xla_flags": os.environ.get("XLA_FLAGS", "")})
    conv_profile(args)
    return
  if args.breakdown:
    emit({"jax": jax.__version__, "device": str(jax.devices()[0])})
    for pair in args.pairs:
      if pair != "lm":
        breakdown(pair, args)
    return
  import torch  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  emit({"jax": jax.__version__, "torch": torch.__version__, "device": str(device),
        "device_kind": device.device_kind, "torch_threads": torch.get_num_threads()})
  bf16 = device.platform != "cpu" if args.bf16 is None else args.bf16
  for pair in args.pairs:
    bench(pair, args, device, False)
    if bf16:
      bench(pair, args, device, True)


if __name__ == "__main__":
  main()
