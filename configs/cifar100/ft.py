r"""CIFAR-100, factor transfer (Kim et al. 2018): 30 epochs of paraphraser training, then CE 1 + 200 x FT.

  python -m kdjax.main --config=configs/cifar100/ft.py:resnet32x4-resnet8x4 \
      --workdir=$HOME/kdjax/cifar100/resnet32x4-resnet8x4/ft

On the last equal-resolution stages: the paraphraser (rate 0.5) learns to reconstruct the
teacher's map alone for 30 epochs (config.stages; RepDistiller's init_epochs), then is frozen and
the translator on the student's map is trained with the student (CE 1 + 200 x FT, RepDistiller's
factor: channel mean of the squared factor, L1). The 240 epochs and their learning-rate steps
follow the pre-training stage.
"""
from kdjax.configs import cifar100


def get_config(pair=None):
  config = cifar100.protocol(pair)
  student, teacher = cifar100.last_stages(pair)
  config.objective = {
      "ft": {"kind": "factor_transfer", "weight": 200.0, "student": student, "teacher": teacher,
             "rate": 0.5, "paraphraser_steps": cifar100.epochs(cifar100.INIT_EPOCHS), "p": 1,
             "channel_power": 2},
      "ce": {"kind": "cross_entropy", "weight": 1.0},
  }
  return cifar100.with_init_stage(config, "ft", ("ce", "ft"))
