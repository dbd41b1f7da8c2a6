"""The CIFAR-100 distillation benchmark protocol (CRD / RepDistiller, DKD / mdistiller) as configs.

The recipe files in ``configs/cifar100/`` start from :func:`protocol` and set their method's
objective; the teacher/student pairs, their learning rates, DKD's per-pair ``beta`` and the
feature layers FitNets and attention transfer read live here, in one table.

Protocol: 240 epochs at batch 64 (187,500 updates), SGD with momentum 0.9 and weight decay 5e-4,
learning rate 0.05 (0.01 for MobileNetV2 and ShuffleNet students) divided by 10 at epochs 150, 180
and 210, random crop with 4 pixels of padding and horizontal flips, per-channel standardisation.
The teacher is trained with the same protocol at learning rate 0.05, in ``WORKDIR/teacher``, unless
``config.teacher.checkpoint`` names one trained before.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from kdjax.models import zoo
from kdjax.train import base_config

__all__ = [
    "BATCH_SIZE", "DECAY_EPOCHS", "DEFAULT_PAIR", "EPOCHS", "INIT_EPOCHS", "PAIRS", "Pair",
    "STEPS_PER_EPOCH", "TEACHER_LEARNING_RATE", "TOTAL_STEPS", "TRAIN_EXAMPLES", "bn_before_relu",
    "epochs", "fsp_layers", "get_pair", "last_stages", "preact", "preact_term", "protocol",
    "teacher", "with_init_stage",
]

TRAIN_EXAMPLES = 50_000
BATCH_SIZE = 64
EPOCHS = 240
STEPS_PER_EPOCH = TRAIN_EXAMPLES / BATCH_SIZE  # 781.25
TOTAL_STEPS = int(EPOCHS * STEPS_PER_EPOCH)  # 187,500
DECAY_EPOCHS = (150.0, 180.0, 210.0)
TEACHER_LEARNING_RATE = 0.05


@dataclasses.dataclass(frozen=True)
class Pair:
  """One teacher -> student pair of the benchmark.

  Attributes:
    teacher, student: zoo model names.
    learning_rate: the student's peak learning rate.
    dkd_beta: DKD's non-target weight for this pair (mdistiller's configs).
    hint: FitNets' (student, teacher) layers: the middle stage, at equal resolution.
    attention: attention transfer's (student layers, teacher layers), paired at equal resolution.
  """

  teacher: str
  student: str
  learning_rate: float
  dkd_beta: float
  hint: tuple[str, str]
  attention: tuple[tuple[str, ...], tuple[str, ...]]


_STAGES3 = ("stage1", "stage2", "stage3")

PAIRS: dict[str, Pair] = {
    "resnet32x4-resnet8x4": Pair("resnet32x4", "resnet8x4", 0.05, 8.0, ("stage2", "stage2"),
                                 (_STAGES3, _STAGES3)),
    "wrn_40_2-wrn_16_2": Pair("wrn_40_2", "wrn_16_2", 0.05, 6.0, ("stage2", "stage2"),
                              (_STAGES3, _STAGES3)),
    "resnet56-resnet20": Pair("resnet56", "resnet20", 0.05, 2.0, ("stage2", "stage2"),
                              (_STAGES3, _STAGES3)),
    "vgg13-vgg8": Pair("vgg13", "vgg8", 0.05, 6.0, ("stage2", "stage2"),
                       (_STAGES3 + ("stage4",), _STAGES3 + ("stage4",))),
    # MobileNetV2 (width 0.5) maps: 16x16 at stage2, 8x8 at stage3, 4x4 at stage5.
    "resnet50-mobilenetv2": Pair("resnet50", "mobilenetv2", 0.01, 8.0, ("stage2", "stage2"),
                                 (("stage2", "stage3", "stage5"), ("stage2", "stage3", "stage4"))),
    # ShuffleNetV2 stages are one resolution step ahead of the ResNet's (16x16 at stage1).
    "resnet32x4-shufflenetv2": Pair("resnet32x4", "shufflenetv2", 0.01, 8.0, ("stage1", "stage2"),
                                    (("stage1", "stage2"), ("stage2", "stage3"))),
}
DEFAULT_PAIR = "resnet32x4-resnet8x4"


def get_pair(name: str | None) -> Pair:
  """The pair ``name`` (``'teacher-student'``; default :data:`DEFAULT_PAIR`)."""
  name = name or DEFAULT_PAIR
  if name not in PAIRS:
    raise ValueError(f"unknown CIFAR-100 pair {name!r}; pass one of {', '.join(PAIRS)} after the "
                     f"config file, e.g. --config=configs/cifar100/kd.py:{DEFAULT_PAIR}")
  return PAIRS[name]


def epochs(n: float) -> int:
  """``n`` epochs of CIFAR-100's training split, in updates of :data:`BATCH_SIZE`."""
  return int(round(n * STEPS_PER_EPOCH))


def protocol(pair: str | None = None) -> ml_collections.ConfigDict:
  """The benchmark protocol for ``pair``, with the plain KD objective (CE 0.1 + KD 0.9, T=4)."""
  p = get_pair(pair)
  config = base_config()
  config.batch_size = BATCH_SIZE
  config.total_steps = TOTAL_STEPS
  config.log_every = 100
  config.eval_every = epochs(10)
  config.checkpoint_every = epochs(10)
  config.keep_checkpoints = 2

  config.data.name = "tfds:cifar100"
  config.data.eval_batch_size = 1000
  config.data.standardize = True
  config.data.augment.crop_padding = 4
  config.data.augment.flip = True

  config.teacher.model = p.teacher
  config.teacher.total_steps = TOTAL_STEPS
  config.teacher.optimizer.learning_rate = TEACHER_LEARNING_RATE
  config.student.model = p.student

  config.optimizer.name = "momentum"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = p.learning_rate
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "step"
  config.optimizer.decay_epochs = DECAY_EPOCHS
  config.optimizer.decay_factor = 0.1

  config.objective = {
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0},
  }
  return config


def last_stages(pair: str | None = None) -> tuple[str, str]:
  """The (student, teacher) stages of the pair's last equal-resolution maps (FT's factors)."""
  student, teacher_layers = get_pair(pair).attention
  return student[-1], teacher_layers[-1]


def preact(model: str, stage: str) -> str:
  """The tap of ``model``'s ``stage`` output before its last ReLU (AB and OFD read these maps;
  :attr:`kdjax.models.zoo.StageLayout.preact`)."""
  return zoo.stage_layout(model).preact[stage]


def bn_before_relu(model: str, stage: str) -> str:
  """The teacher BatchNorm whose parameters give OFD's margin for ``stage`` (mdistiller's
  ``get_bn_before_relu``; :attr:`kdjax.models.zoo.StageLayout.bn_before_relu`)."""
  layout = zoo.stage_layout(model)
  if stage not in layout.bn_before_relu:
    raise ValueError(f"OFD's margins need the teacher's BatchNorm before a ReLU; no rule for "
                     f"{model!r} (pass the ofd term's teacher_bn= paths)")
  return layout.bn_before_relu[stage]


def preact_term(pair: str | None, kind: str, **kwargs) -> dict:
  """A ``kind`` term (``activation_boundary``, ``ofd``) on the pair's equal-resolution stages
  (:attr:`Pair.attention`), tapped before their last ReLU."""
  p = get_pair(pair)
  student, teacher_layers = p.attention
  term = {"kind": kind, "student": tuple(preact(p.student, s) for s in student),
          "teacher": tuple(preact(p.teacher, s) for s in teacher_layers), **kwargs}
  if kind == "ofd":
    term["teacher_bn"] = tuple(bn_before_relu(p.teacher, s) for s in teacher_layers)
  return term


def fsp_layers(pair: str | None) -> tuple[str, ...]:
  """The maps FSP pairs consecutively (RepDistiller's ``feat[:-1]``: the stem and every stage);
  FSP matrices compare only where student and teacher have equal channel counts at each map."""
  p = get_pair(pair)
  channels = zoo.stage_layout(p.teacher).channels
  if channels is None or channels != zoo.stage_layout(p.student).channels:
    raise ValueError(f"FSP compares maps of equal channel counts, which {p.teacher} and "
                     f"{p.student} do not have (RepDistiller reports no FSP number for this "
                     f"pair); use a pair of one family, e.g. --config=configs/cifar100/fsp.py:"
                     f"{DEFAULT_PAIR}")
  return ("stem",) + tuple(f"stage{k}" for k in range(1, len(channels)))


# Stages before distillation, in epochs, as RepDistiller's ``init_epochs`` (they are added to the
# 240 epochs, and the learning-rate steps move back by as much).
INIT_EPOCHS = 30


def with_init_stage(config: ml_collections.ConfigDict, term: str,
                    later: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Prepends ``INIT_EPOCHS`` of ``term`` alone, then runs ``later`` for the usual 240 epochs."""
  config.total_steps = TOTAL_STEPS + epochs(INIT_EPOCHS)
  config.optimizer.decay_epochs = tuple(e + INIT_EPOCHS for e in DECAY_EPOCHS)
  config.stages = ({"steps": epochs(INIT_EPOCHS), "terms": (term,)},
                   {"steps": 0, "terms": later})
  return config


def teacher(model: str | None = None) -> ml_collections.ConfigDict:
  """Trains only a teacher (``model``, default resnet32x4) with the protocol, at rate 0.05."""
  model = model or PAIRS[DEFAULT_PAIR].teacher
  teachers = sorted({p.teacher for p in PAIRS.values()})
  if model not in teachers:
    raise ValueError(f"{model!r} is not a teacher of the CIFAR-100 pairs; pass one of "
                     f"{', '.join(teachers)}, e.g. --config=configs/cifar100/teacher.py:resnet56")
  config = protocol()
  config.teacher.model = model
  config.teacher_only = True
  return config
