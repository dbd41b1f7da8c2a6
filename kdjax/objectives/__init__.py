"""Distillation objectives: losses lifted into weighted, schedulable init/apply terms.

Every term kind a config can name is in one table (:func:`term_kinds`); a term states what it
reads in its :class:`Needs`, including whether it reads the live teacher
(:func:`needs_live_teacher`).
"""
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
from kdjax.objectives._terms import term_constructor
from kdjax.objectives._catalogue import activation_boundary
from kdjax.objectives._catalogue import correlation_congruence
from kdjax.objectives._catalogue import factor_transfer
from kdjax.objectives._catalogue import fsp
from kdjax.objectives._catalogue import kdsvd
from kdjax.objectives._catalogue import mlkd
from kdjax.objectives._catalogue import ofd
from kdjax.objectives._catalogue import srd
from kdjax.objectives._cached import KD_TEMPERATURE
from kdjax.objectives._cached import TOPK_INDICES_KEY
from kdjax.objectives._cached import TOPK_VALUES_KEY
from kdjax.objectives._cached import cached_kd
from kdjax.objectives._sampled import SAMPLED_INDICES_KEY
from kdjax.objectives._sampled import SAMPLED_WEIGHTS_KEY
from kdjax.objectives._sampled import sampled_kd
from kdjax.objectives._crd import crd
from kdjax.objectives._crd import momentum_update
from kdjax.objectives._review import AttentionFusion
from kdjax.objectives._review import ReviewFusion
from kdjax.objectives._review import review_kd
from kdjax.objectives._vid import vid
from kdjax.objectives._dense import channel_wise_distillation
from kdjax.objectives._dense import feature_imitation
from kdjax.objectives._dense import heatmap_kd
from kdjax.objectives._dense import localization_distillation
from kdjax.objectives._dense import pairwise_similarity_distillation
from kdjax.objectives._dense import pixel_kd
from kdjax.objectives._dense import point_detection
from kdjax.objectives._registry import DATASET_ARGS
from kdjax.objectives._registry import TermKind
from kdjax.objectives._registry import needs_live_teacher
from kdjax.objectives._registry import needs_of
from kdjax.objectives._registry import register_term_kind
from kdjax.objectives._registry import term_kinds

__all__ = (
    "AttentionFusion",
    "DATASET_ARGS",
    "KD_TEMPERATURE",
    "Needs",
    "ReviewFusion",
    "SAMPLED_INDICES_KEY",
    "SAMPLED_WEIGHTS_KEY",
    "TOPK_INDICES_KEY",
    "TOPK_VALUES_KEY",
    "Term",
    "TermKind",
    "activation_boundary",
    "attention_transfer",
    "cached_kd",
    "cka",
    "combine",
    "correlation_congruence",
    "cosine",
    "crd",
    "cross_entropy",
    "dist",
    "dkd",
    "factor_transfer",
    "feature_mse",
    "fitnets",
    "from_loss",
    "fsp",
    "gather_batch",
    "jensen_shannon",
    "kd",
    "kdsvd",
    "logit_mse",
    "masked_mean",
    "mlkd",
    "momentum_update",
    "needs_live_teacher",
    "needs_of",
    "nst",
    "ofd",
    "pkt",
    "projected",
    "register_term_kind",
    "reverse_kd",
    "review_kd",
    "rkd",
    "rkd_angle",
    "rkd_distance",
    "sampled_kd",
    "select",
    "similarity_preserving",
    "soft_cross_entropy",
    "srd",
    "term_constructor",
    "term_kinds",
    "vid",
    "channel_wise_distillation",
    "feature_imitation",
    "heatmap_kd",
    "localization_distillation",
    "pairwise_similarity_distillation",
    "pixel_kd",
    "point_detection",
)
