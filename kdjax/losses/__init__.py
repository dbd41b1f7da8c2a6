"""Distillation losses: pure functions of arrays, optax style.

Per-example (or per-token) losses return one value per example, shape ``logits.shape[:-1]``
(``[batch]`` for feature maps); the caller reduces them. The same function serves ``[B, C]`` and
``[B, L, V]`` logits, with an optional ``mask`` of shape ``logits.shape[:-1]`` (or ``[B]``):
masked positions return exactly 0, and :func:`masked_mean` reduces over the kept ones.
Batch-level losses (relations and DIST) return a scalar. Inputs of any float dtype are computed
in float32 (float64 stays float64); integer, boolean or complex logits are a ``TypeError``.
Conventions: ``p^T = softmax(z / T)``; temperature-scaled divergences are multiplied by ``T^2``;
``kd`` is the forward ``KL(teacher || student)``; feature maps are channel-last.
"""
# Response-based.
from kdjax.losses._response import cross_entropy
from kdjax.losses._response import dist
from kdjax.losses._response import dkd
from kdjax.losses._response import jensen_shannon
from kdjax.losses._response import kd
from kdjax.losses._response import logit_mse
from kdjax.losses._response import reverse_kd
from kdjax.losses._response import soft_cross_entropy
from kdjax.losses._response import standardize_logits
# Feature-based.
from kdjax.losses._feature import attention_transfer
from kdjax.losses._feature import cosine_distance
from kdjax.losses._feature import feature_mse
from kdjax.losses._feature import nst
from kdjax.losses._feature import adaptive_avg_pool
from kdjax.losses._feature import match_spatial
from kdjax.losses._feature import hierarchical_context_loss
# Hints with adapters' outputs: factors, activation boundaries, margins, the teacher's head.
from kdjax.losses._hint import activation_boundary
from kdjax.losses._hint import factor_transfer
from kdjax.losses._hint import ofd
from kdjax.losses._hint import ofd_margin
from kdjax.losses._hint import srd
from kdjax.losses._hint import vid_nll
# Contrastive.
from kdjax.losses._contrastive import nce_loss
# Structure: correlations between examples (batch-level), between layers (per example).
from kdjax.losses._structure import correlation_congruence
from kdjax.losses._structure import fsp
from kdjax.losses._structure import fsp_matrix
from kdjax.losses._structure import kdsvd
# Multi-level logits (batch-level).
from kdjax.losses._multilevel import mlkd
# Relation-based (batch-level, scalar).
from kdjax.losses._relation import cka
from kdjax.losses._relation import pkt
from kdjax.losses._relation import rkd_angle
from kdjax.losses._relation import rkd_distance
from kdjax.losses._relation import similarity_preserving
# Language models (per-token, optional mask).
from kdjax.losses._language import attention_kl
from kdjax.losses._language import attention_mse
from kdjax.losses._language import generalized_jsd
from kdjax.losses._language import hidden_mse
from kdjax.losses._language import skew_kl
from kdjax.losses._language import skew_reverse_kl
from kdjax.losses._language import SPARSE_MODES
from kdjax.losses._language import sparse_kd
from kdjax.losses._language import topk_teacher_logits
# Across tokenizers (aligned positions / spans) and sampled sparse targets.
from kdjax.losses._cross_tokenizer import next_byte_kl
from kdjax.losses._cross_tokenizer import span_kl
from kdjax.losses._cross_tokenizer import uld
from kdjax.losses._sampled import sampled_cross_entropy
# Dense prediction: segmentation maps, detection heatmaps and box-edge distributions.
from kdjax.losses._dense import cell_centers
from kdjax.losses._dense import channel_wise_distillation
from kdjax.losses._dense import distribution_focal_loss
from kdjax.losses._dense import edge_distances
from kdjax.losses._dense import feature_imitation
from kdjax.losses._dense import heatmap_focal_loss
from kdjax.losses._dense import heatmap_kd
from kdjax.losses._dense import imitation_mask
from kdjax.losses._dense import localization_distillation
from kdjax.losses._dense import pairwise_similarity_distillation
from kdjax.losses._dense import pixel_kd
from kdjax.losses._dense import point_targets
from kdjax.losses._dense import teacher_confidence
# Reduction (optional mask).
from kdjax.losses._utils import masked_mean

__all__ = (
    "attention_kl",
    "attention_mse",
    "attention_transfer",
    "cka",
    "cosine_distance",
    "cross_entropy",
    "dist",
    "dkd",
    "feature_mse",
    "generalized_jsd",
    "hidden_mse",
    "jensen_shannon",
    "kd",
    "logit_mse",
    "masked_mean",
    "nst",
    "pkt",
    "reverse_kd",
    "rkd_angle",
    "rkd_distance",
    "similarity_preserving",
    "skew_kl",
    "skew_reverse_kl",
    "soft_cross_entropy",
    "sparse_kd",
    "standardize_logits",
    "topk_teacher_logits",
    "activation_boundary",
    "adaptive_avg_pool",
    "correlation_congruence",
    "factor_transfer",
    "fsp",
    "fsp_matrix",
    "kdsvd",
    "match_spatial",
    "mlkd",
    "ofd",
    "ofd_margin",
    "srd",
    "hierarchical_context_loss",
    "nce_loss",
    "vid_nll",
    "SPARSE_MODES",
    "sampled_cross_entropy",
    "next_byte_kl",
    "span_kl",
    "uld",
    "TERMS",
    "cell_centers",
    "channel_wise_distillation",
    "distribution_focal_loss",
    "edge_distances",
    "feature_imitation",
    "heatmap_focal_loss",
    "heatmap_kd",
    "imitation_mask",
    "localization_distillation",
    "pairwise_similarity_distillation",
    "pixel_kd",
    "point_targets",
    "teacher_confidence",
)

# Config term kinds that are a loss lifted as it is by kdjax.objectives.from_loss, one line each:
# kind (the loss's name) -> from_loss options ({} reads both models' logits; 'teacher': None for
# a loss of the student alone; 'labels': True passes batch['label']; 'batch_level': True for
# batch-level losses). The term's config arguments are the loss's keyword arguments plus the
# taps ('student', 'teacher'). Terms with adapters or state are written in kdjax.objectives.
TERMS = {
    "skew_kl": {},
    "skew_reverse_kl": {},
}
