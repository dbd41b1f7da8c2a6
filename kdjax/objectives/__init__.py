"""Distillation objectives: losses lifted into weighted, schedulable init/apply terms."""
from kdjax.objectives._base import Needs
from kdjax.objectives._base import Term
from kdjax.objectives._base import combine
from kdjax.objectives._base import gather_batch
from kdjax.objectives._base import masked_mean
from kdjax.objectives._base import select
from kdjax.objectives._terms import attention_transfer
from kdjax.objectives._terms import cka
from kdjax.objectives._terms import cosine
from kdjax.objectives._terms import cross_entropy
from kdjax.objectives._terms import dist
from kdjax.objectives._terms import dkd
from kdjax.objectives._terms import feature_mse
from kdjax.objectives._terms import fitnets
from kdjax.objectives._terms import from_loss
from kdjax.objectives._terms import jensen_shannon
from kdjax.objectives._terms import kd
from kdjax.objectives._terms import logit_mse
from kdjax.objectives._terms import nst
from kdjax.objectives._terms import pkt
from kdjax.objectives._terms import projected
from kdjax.objectives._terms import reverse_kd
from kdjax.objectives._terms import rkd
from kdjax.objectives._terms import rkd_angle
from kdjax.objectives._terms import rkd_distance
from kdjax.objectives._terms import similarity_preserving
from kdjax.objectives._terms import soft_cross_entropy
from kdjax.objectives._catalogue import activation_boundary
from kdjax.objectives._catalogue import correlation_congruence
from kdjax.objectives._catalogue import factor_transfer
from kdjax.objectives._catalogue import fsp
from kdjax.objectives._catalogue import kdsvd
from kdjax.objectives._catalogue import mlkd
from kdjax.objectives._catalogue import ofd
from kdjax.objectives._catalogue import srd
from kdjax.objectives._registry import TermKind
from kdjax.objectives._registry import register
from kdjax.objectives._registry import term_kinds

for _name in ("cross_entropy", "kd", "dkd", "dist", "fitnets", "attention_transfer", "nst",
              "feature_mse", "cosine", "similarity_preserving", "rkd", "rkd_distance",
              "rkd_angle", "pkt", "cka", "soft_cross_entropy", "reverse_kd", "jensen_shannon",
              "logit_mse"):
  register(_name, globals()[_name])
del _name
for _name in ("correlation_congruence", "fsp", "factor_transfer", "activation_boundary", "kdsvd",
              "mlkd"):
  register(_name, globals()[_name])
register("ofd", ofd, dataset_args=("teacher_model",))
register("srd", srd, dataset_args=("teacher_model",))
del _name
