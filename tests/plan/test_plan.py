"""kdjax.plan: real AOT compiles for TPU and GPU topologies on this CPU (needs the plan extra).

Models are tiny so that each TPU compile takes seconds; the CIFAR ResNet plans are slow tests.
"""
import ast
import copy
import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

pytest.importorskip("libtpu", reason="the plan extra is not installed: pip install 'kdjax[plan]'")
pytest.importorskip("jax_plugins.xla_cuda12", reason="the plan extra is not installed")

from kdjax import plan as plan_lib  # noqa: E402
from kdjax.plan import _main  # noqa: E402
from kdjax.train import ConfigError  # noqa: E402
from kdjax.train import quiet  # noqa: E402
from kdjax.train.config import base_config  # noqa: E402
from tests import helpers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**overrides):
  c = base_config()
  c.data.name = "synthetic"  # 16x16x3 images, 10 classes, generated: nothing to read
  c.batch_size = 32
  c.data.eval_batch_size = 32
  c.compare_baseline = False
  c.teacher.model = "mlp"
  c.teacher.model_kwargs = {"hidden": (64,)}
  c.student.model = "mlp"
  c.student.model_kwargs = {"hidden": (32,)}
  return helpers.with_overrides(c, overrides)


def pasted(config, suggestion):
  """``config`` with the ``--config.<key>=<value>`` overrides of a suggestion set, as the
  command line would set them."""
  overrides = {}
  for item in suggestion.split():
    key, value = item.removeprefix("--config.").split("=", 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value  # A string: bfloat16.
  return helpers.with_overrides(copy.deepcopy(config), overrides)


@pytest.fixture(scope="module")
def v5e_2x2():
  return plan_lib.get_topology("v5e:2x2")


def test_topologies_report_chip_hosts_and_devices():
  tpu = plan_lib.get_topology("v5e-16")  # the slice name of v5e:4x4
  assert (len(tpu.devices), tpu.processes, tpu.devices_per_process) == (16, 4, 4)
  assert tpu.chip.hbm_bytes == 16 * 2**30 and tpu.device == tpu.chip
  # v4's compile-only devices are its TensorCores, two per chip sharing its 32 GiB.
  v4 = plan_lib.get_topology("v4-8")
  assert (len(v4.devices), v4.devices_per_chip, v4.device.hbm_bytes) == (8, 2, 16 * 2**30)
  assert v4.device.peak_flops == plan_lib.CHIPS["v4"].peak_flops / 2
  gpu = plan_lib.get_topology("h100:2x8")
  assert (len(gpu.devices), gpu.processes, gpu.devices_per_process) == (16, 2, 8)
  assert gpu.devices[0].device_kind == "NVIDIA H100 80GB HBM3"
  assert plan_lib.get_topology("a100:1x1").devices[0].device_kind == "NVIDIA A100-SXM4-80GB"
  assert plan_lib.get_topology("l4:1x2").devices[0].device_kind == "NVIDIA L4"


@pytest.mark.parametrize("name", ["v5e", "v5e:2", "h100:8", "tpu9:2x2"])
def test_bad_topology_names_say_what_to_write(name):
  with pytest.raises(plan_lib.TopologyError, match="topolog"):
    plan_lib.get_topology(name)


@pytest.mark.parametrize("module,topology", [("libtpu", "v5e:2x2"),
                                             ("jax_plugins.xla_cuda12", "h100:1x8")])
def test_without_the_plan_extra_the_error_says_how_to_install_it(monkeypatch, capsys, module,
                                                                 topology):
  monkeypatch.setitem(__import__("sys").modules, module, None)  # import raises ImportError
  code = _main.main([f"--config={REPO}/configs/quickstart.py", f"--topology={topology}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1
  assert err[0].endswith("pip install 'kdjax[plan]'")


def test_costs_of_a_sharded_matmul_are_global(v5e_2x2):
  # [64, 256] @ [256, 512] split over 4 devices: 2*64*256*512 FLOPs for the whole program.
  mesh = Mesh(np.asarray(v5e_2x2.devices), ("data",))
  fn = jax.jit(lambda x, w: jnp.tanh(x @ w), in_shardings=(
      NamedSharding(mesh, P("data")), NamedSharding(mesh, P())))
  lowered = fn.lower(jax.ShapeDtypeStruct((64, 256), jnp.float32),
                     jax.ShapeDtypeStruct((256, 512), jnp.float32))
  cost = plan_lib.analyze(lowered, lowered.compile(), v5e_2x2.chip, 4)
  assert cost.flops == pytest.approx(2 * 64 * 256 * 512, rel=0.05)
  # Per device: x's quarter and all of w in, y's quarter out.
  assert cost.argument_bytes == (64 * 256 // 4 + 256 * 512) * 4
  assert cost.output_bytes == 64 * 512 // 4 * 4
  assert cost.time_source == "compiler" and cost.seconds > 0


def test_gpu_flops_count_convolutions():
  # cuDNN convolutions are custom calls in the optimised GPU module; the count must include them.
  h100 = plan_lib.get_topology("h100:1x2")
  mesh = Mesh(np.asarray(h100.devices), ("data",))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fn = jax.jit(conv, in_shardings=(NamedSharding(mesh, P("data")), NamedSharding(mesh, P())))
  lowered = fn.lower(jax.ShapeDtypeStruct((8, 16, 16, 32), jnp.float32),
                     jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.float32))
  cost = plan_lib.analyze(lowered, lowered.compile(), h100.chip, 2)
  # SAME padding: along each axis 16 outputs x 3 taps, less the 2 taps that fall on padding.
  assert cost.flops == pytest.approx(2 * 8 * (16 * 3 - 2) ** 2 * 32 * 64, rel=0.01)
  assert cost.time_source == "roofline" and cost.bytes_accessed > 0


def test_collectives_are_counted_from_hlo_text():
  text = """
  %all-reduce-start.1 = f32[8]{0} all-reduce-start(f32[8]{0} %p), replica_groups={}
  %all-reduce-done.1 = f32[8]{0} all-reduce-done(f32[8]{0} %all-reduce-start.1)
  %ag = f32[16]{0} all-gather(f32[4]{0} %q), dimensions={0}
  %rs = f32[2]{0} reduce-scatter(f32[8]{0} %r), dimensions={0}
  %ar2 = (f32[], f32[]) all-reduce(f32[] %a, f32[] %b)
  """
  assert plan_lib.count_collectives(text) == {"all-reduce": 2, "all-gather": 1,
                                             "reduce-scatter": 1}


def test_tiny_distillation_fits_on_v5e_2x2(v5e_2x2):
  report = plan_lib.plan(tiny_config(), v5e_2x2)
  assert list(report.runs) == ["teacher", "student_kd"]
  assert report.fits and report.suggestion is None
  kd = report.runs["student_kd"]
  assert 0 < kd.peak_bytes < 64 * 2**20
  assert kd.train.peak_bytes == (kd.train.argument_bytes + kd.train.temp_bytes +
                                 kd.train.output_bytes - kd.train.alias_bytes)
  # Data parallel: the gradients (and BatchNorm-free metrics) are all-reduced.
  assert kd.train.collectives["all-reduce"] >= 1
  # Forward FLOPs of the two MLPs per example, times ~3 for the student's backward.
  teacher = 2 * (768 * 64 + 64 * 10)
  student = 2 * (768 * 32 + 32 * 10)
  expected = 32 * (teacher + 3 * student)
  assert kd.flops_per_step == pytest.approx(expected, rel=0.25)
  assert 0 < kd.mfu < 1 and kd.examples_per_second > 0
  line = report.to_json()
  assert set(line) == {"topology", "devices", "processes", "runs", "suggestion"}
  assert set(line["runs"]["student_kd"]) == {"fits", "peak_bytes_per_device",
                                             "hbm_bytes_per_device", "step_seconds",
                                             "flops_per_step"}


def test_runs_limits_the_plan_to_the_named_runs(v5e_2x2):
  report = plan_lib.plan(tiny_config(), v5e_2x2, evaluate=False, runs=["student_kd"])
  assert list(report.runs) == ["student_kd"] and report.runs["student_kd"].fits
  with pytest.raises(ConfigError, match="no run student_kd2; its runs are teacher, student_kd"):
    plan_lib.plan(tiny_config(), v5e_2x2, runs=["student_kd2"])


def test_multi_host_slice_plans_from_one_machine():
  report = plan_lib.plan(tiny_config(**{"teacher_only": True, "batch_size": 64}), "v5e:4x4",
                         evaluate=False)
  assert (report.devices, report.processes, report.devices_per_process) == (16, 4, 4)
  assert report.runs["teacher"].fits


def test_h100_plan_uses_a_labelled_roofline():
  report = plan_lib.plan(tiny_config(), "h100:1x2")
  kd = report.runs["student_kd"]
  assert kd.fits and kd.hbm_bytes == plan_lib.CHIPS["h100"].hbm_bytes
  assert kd.train.time_source == "roofline"
  assert kd.step_seconds == pytest.approx(max(
      kd.flops_per_step / 2 / plan_lib.CHIPS["h100"].peak_flops,
      kd.train.bytes_accessed / 2 / plan_lib.CHIPS["h100"].bandwidth))


def test_a_teacher_too_large_for_one_chip_gets_a_suggestion_that_fits(v5e_2x2):
  # A loaded 4.4e9-parameter MLP teacher (17.6 GB in float32) does not fit a 16 GiB v5e chip.
  config = tiny_config(**{"teacher.model_kwargs": {"hidden": (65536, 65536)},
                          "teacher.checkpoint": "/nonexistent/teacher"})
  report = plan_lib.plan(config, v5e_2x2, evaluate=False)
  assert not report.fits
  refused = report.runs["student_kd"]
  assert not refused.fits and "RESOURCE_EXHAUSTED" in refused.error
  assert refused.peak_bytes > 15 * 2**30  # what the compiler said it needs
  assert report.suggestion == ("--config.mesh.fsdp=2 --config.shard_teacher=True "
                               "--config.shard_student=True")
  assert report.suggested.fits
  # Pasting the printed suggestion back: the same plan fits.
  again = plan_lib.plan(pasted(config, report.suggestion), v5e_2x2, evaluate=False,
                        suggest=False)
  assert again.fits
  # The run's own FSDP rule placed the teacher: its halves are gathered inside the step.
  assert again.runs["student_kd"].train.collectives["all-gather"] >= 1
  assert again.runs["student_kd"].peak_bytes < report.runs["student_kd"].peak_bytes / 1.5


def test_suggestion_candidates_go_from_least_to_most_intrusive():
  groups = plan_lib.candidates(tiny_config(batch_size=64), num_devices=4, has_teacher=True)
  assert groups[0] == [{"mesh.fsdp": 2, "shard_teacher": True},
                       {"mesh.fsdp": 4, "shard_teacher": True}]
  both = {"shard_teacher": True, "shard_student": True}
  assert groups[1] == [{"mesh.fsdp": 2, **both}, {"mesh.fsdp": 4, **both}]
  if "model" in tiny_config().mesh:  # Megatron-style model axis, where the mesh has one.
    assert groups.pop(2) == [{"mesh.model": 2}, {"mesh.model": 4}]
  bf16 = {"teacher.dtype": "bfloat16", "student.dtype": "bfloat16"}
  assert groups[2] == [{"mesh.fsdp": 4, **both, **bf16}]
  # 64 examples over 4 devices: accumulation 2, 4 and 8 keep whole micro-batches per device.
  assert [g["accumulation_steps"] for g in groups[3]] == [2, 4, 8]
  assert [g["batch_size"] for g in groups[4]] == [32, 16, 8]
  # Without a teacher to shard, and with data parallelism fixed in the config:
  groups = plan_lib.candidates(tiny_config(**{"mesh.data": 4}), num_devices=4,
                               has_teacher=False)
  assert groups[0][0] == {"mesh.data": -1, "mesh.fsdp": 2, **both}
  assert plan_lib._plan.format_overrides(groups[0][0]) == (
      "--config.mesh.data=-1 --config.mesh.fsdp=2 --config.shard_teacher=True "
      "--config.shard_student=True")
  # Models with rematerialised blocks (the zoo's Transformers): after bfloat16, before
  # accumulation, and kept by the later groups. The MLP student has none.
  lm = tiny_config(**{"teacher.model": "transformer_lm", "teacher.model_kwargs": {}})
  groups = plan_lib.candidates(lm, num_devices=4, has_teacher=True)
  remat = [g for g in groups if any("teacher.remat" in c for c in g)]
  assert remat[0] == [{"mesh.fsdp": 4, **both, **bf16, "teacher.remat": True}]
  assert groups.index(remat[0]) == groups.index([{"mesh.fsdp": 4, **both, **bf16}]) + 1
  assert all(c["teacher.remat"] and "student.remat" not in c for g in remat[1:] for c in g)


def test_command_prints_table_and_json_last(tmp_path, capsys):
  config = tmp_path / "tiny.py"
  config.write_text("from kdjax.train.config import base_config\n\n"
                    "def get_config():\n  c = base_config()\n  c.data.name = 'synthetic'\n"
                    "  c.teacher_only = True\n  c.teacher.model = 'mlp'\n"
                    "  c.data.eval_batch_size = 32\n  return c\n")
  code = _main.main([f"--config={config}", "--topology=v5e:2x2", "--config.batch_size=64",
                     "--noeval"])
  captured = capsys.readouterr()
  out = captured.out.strip().splitlines()
  assert code == 0, captured.err
  assert out[0].startswith("topology v5e:2x2: 4 x v5e")
  assert any(line.startswith("teacher ") and " yes " in line for line in out)
  summary = json.loads(out[-1])
  assert summary["devices"] == 4 and summary["processes"] == 1
  assert summary["runs"]["teacher"]["fits"] is True


def test_no_chip_noise_is_dropped_and_other_stderr_lines_kept(capfd):
  noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
           "STDERR\nI0000 00:00:17.1 7029 cudart_stub.cc:31] Could not find cuda drivers on your "
           "machine, GPU will not be used.\nFailed to find host bounds for accelerator type: "
           "WARNING: could not determine TPU accelerator type, please set env var "
           "`TPU_ACCELERATOR_TYPE` manually\n=== Source Location Trace: === \n"
           "learning/45eac/tfrc/runtime/libtpu_init_utils.cc:327\n")
  with pytest.raises(KeyError):  # Written back even when the block raises.
    with quiet.no_chip_noise():
      os.write(2, noise.encode())
      os.write(2, b"a real warning\n")
      print("from python", file=sys.stderr)
      raise KeyError("x")
  # (Under pytest, Python's sys.stderr is captured apart from the descriptor: order aside.)
  assert sorted(capfd.readouterr().err.splitlines()) == ["a real warning", "from python"]


def test_command_errors_are_one_line(capsys):
  code = _main.main([f"--config={REPO}/configs/quickstart.py", "--topology=v9x:2x2"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and "is not a topology" in err[0]


def cifar100_kd_config():
  return runpy.run_path(f"{REPO}/configs/cifar100/kd.py")["get_config"]()


def test_dataset_shapes_come_from_metadata_without_examples():
  # CIFAR-100 need not be prepared: TFDS's catalog gives the features, kdjax the split size.
  config, data = plan_lib._runs.resolve(cifar100_kd_config())
  assert (data.shapes.num_classes, data.shapes.input_shape, data.shapes.num_train) == (
      100, (32, 32, 3), 50_000)
  assert config.student.num_classes == 100
  batch = data.example_batch(8)
  assert batch["image"].shape == (8, 32, 32, 3) and batch["label"].dtype == jnp.int32


@pytest.mark.slow
def test_cifar100_kd_on_v5e_2x2_matches_the_analytic_flops():
  # resnet32x4 -> resnet8x4 at 256 images: about 2.76 GFLOP per image (teacher forward, student
  # forward and backward).
  config = cifar100_kd_config()
  config.batch_size = 256
  config.compare_baseline = False  # fewer compiles: a loaded teacher and student_kd
  config.teacher.checkpoint = "/nonexistent/teacher"  # shapes only; nothing is read
  report = plan_lib.plan(config, "v5e:2x2", evaluate=False, suggest=False)
  kd = report.runs["student_kd"]
  assert kd.fits
  assert kd.flops_per_step / 256 == pytest.approx(2.76e9, rel=0.25)


@pytest.mark.slow
def test_the_command_prints_only_its_table_and_json(tmp_path):
  # A fresh process: libtpu and the CUDA plugin start here, on a machine with neither chip.
  config = tmp_path / "tiny.py"
  config.write_text("from kdjax.train.config import base_config\n\n"
                    "def get_config():\n  c = base_config()\n  c.data.name = 'synthetic'\n"
                    "  c.teacher_only = True\n  c.teacher.model = 'mlp'\n  return c\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  for topology in ("v5e:2x2", "h100:1x2"):
    result = subprocess.run(
        [sys.executable, "-m", "kdjax.plan", f"--config={config}", f"--topology={topology}",
         "--config.batch_size=64", "--noeval"], capture_output=True, text=True, env=env,
        cwd=REPO, check=False, timeout=600)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout.strip().splitlines()
    assert out[0].startswith(f"topology {topology}:") and len(out) == 5
    assert json.loads(out[-1])["runs"]["teacher"]["fits"] is True


@pytest.mark.slow
def test_lm_with_a_1b_teacher_does_not_fit_v5e_2x2_at_batch_128_until_its_suggestion():
  # configs/lm/distill.py with a 1.2B-parameter teacher (d_model 2048, 24 layers, 16 heads): its
  # own training step at 128 rows of 64 tokens needs more than a v5e chip's 16 GiB.
  config = runpy.run_path(f"{REPO}/configs/lm/distill.py")["get_config"]()
  config.teacher.model_kwargs.update(d_model=2048, n_layers=24, n_heads=16)
  config.batch_size = 128
  report = plan_lib.plan(config, "v5e:2x2", evaluate=False, runs=["teacher"])
  assert not report.runs["teacher"].fits and report.runs["teacher"].params > 1.1e9
  assert report.suggestion and report.suggested.fits
  again = plan_lib.plan(pasted(config, report.suggestion), "v5e:2x2", evaluate=False,
                        suggest=False, runs=["teacher"])
  assert again.fits
