"""Language-model distillation on top of the ordinary :func:`kdjax.distill_step`.

Batches are ``{'tokens': int [B, L], 'targets': int [B, L], 'mask': bool [B, L]}`` and the state
is ``DistillState.create(..., input_key='tokens', label_key='targets')``; every term here is
masked by padding and reduced as a token-weighted mean.

* Token-level terms: :func:`token_cross_entropy_term`, :func:`token_kd_term`,
  :func:`token_reverse_kd_term`, :func:`token_jensen_shannon_term`, :func:`skew_kl_term`,
  :func:`skew_reverse_kl_term`.
* Sparse (top-k) teachers: :func:`sparse_kd_term` (top-k taken inside the step) and
  :class:`TeacherCache` + :func:`cached_sparse_kd_term` (top-k precomputed once; no teacher
  forward during training).
* Sequence-level KD: :func:`greedy_decode`, :func:`beam_search`, :func:`sequence_kd_dataset`.
* Transformer internals: :func:`hidden_mse_term`, :func:`hidden_cosine_term`,
  :func:`attention_kl_term`, :func:`attention_mse_term`, with :func:`uniform_layer_map` and
  :func:`mapped_taps`.
* Decoders (:func:`kdjax.models.from_hf`): key-value-cache :func:`generate` (with
  :func:`prefill`, :func:`decode_step`, :func:`sample_logits`); packed rows
  (:func:`pack_sequences`); :func:`chunked_divergence` from hidden states and heads, and its
  term :func:`chunked_kd_term` (config: ``chunk_size`` on a ``kd`` / ``reverse_kd`` /
  ``jensen_shannon`` term, :data:`CHUNKED_KINDS`).
* Data helpers: :func:`sequence_windows`, :func:`batches`, :func:`perplexity`,
  :func:`bits_per_byte`.
* Across tokenizers: :class:`ByteTokenizer`, :class:`BpeTokenizer` (byte offsets),
  :func:`align_spans`, :func:`cross_tokenizer_windows`, :func:`gather_positions`,
  :func:`cross_tokenizer_losses`, :func:`cross_tokenizer_term`.
* Sampled offline targets: :func:`sample_teacher_targets`, :func:`sampled_kd_term`; several
  teachers, one per example: :func:`routed_teacher`, :func:`route_teachers`,
  :func:`check_teacher_ids`.
* On-policy distillation (GKD): :class:`OnPolicyConfig`, :func:`generalized_jsd_term`,
  :func:`on_policy_keys`, :func:`on_policy_batch`, :func:`on_policy_step` (the ``on_policy``
  run kind, ``configs/lm/gkd.py``).
"""
from kdjax.lm._cache import TeacherCache
from kdjax.lm._chunked import chunked_divergence
from kdjax.lm._chunked_term import CHUNKED_KINDS
from kdjax.lm._chunked_term import chunked_kd_term
from kdjax.lm._data import batches
from kdjax.lm._data import pack_sequences
from kdjax.lm._data import perplexity
from kdjax.lm._data import sequence_windows
from kdjax.lm._decode import beam_search
from kdjax.lm._decode import greedy_decode
from kdjax.lm._generate import decode_step
from kdjax.lm._generate import generate
from kdjax.lm._generate import prefill
from kdjax.lm._generate import sample_logits
from kdjax.lm._sequence import sequence_kd_dataset
from kdjax.lm._terms import TOPK_INDICES_KEY
from kdjax.lm._terms import TOPK_VALUES_KEY
from kdjax.lm._terms import attention_kl_term
from kdjax.lm._terms import attention_mse_term
from kdjax.lm._terms import cached_sparse_kd_term
from kdjax.lm._terms import hidden_cosine_term
from kdjax.lm._terms import hidden_mse_term
from kdjax.lm._terms import mapped_taps
from kdjax.lm._terms import skew_kl_term
from kdjax.lm._terms import skew_reverse_kl_term
from kdjax.lm._terms import sparse_kd_term
from kdjax.lm._terms import token_cross_entropy_term
from kdjax.lm._terms import token_jensen_shannon_term
from kdjax.lm._terms import token_kd_term
from kdjax.lm._terms import token_mask
from kdjax.lm._terms import token_reverse_kd_term
from kdjax.lm._terms import uniform_layer_map
from kdjax.lm._cross_tokenizer import CROSS_TOKENIZER_LOSSES
from kdjax.lm._cross_tokenizer import TEACHER_TOKENS_KEY
from kdjax.lm._cross_tokenizer import align_spans
from kdjax.lm._cross_tokenizer import cross_tokenizer_losses
from kdjax.lm._cross_tokenizer import cross_tokenizer_term
from kdjax.lm._cross_tokenizer import cross_tokenizer_windows
from kdjax.lm._cross_tokenizer import gather_positions
from kdjax.lm._metrics import TARGET_BYTES_KEY
from kdjax.lm._metrics import bits_per_byte
from kdjax.lm._on_policy import OnPolicyConfig
from kdjax.lm._on_policy import generalized_jsd_term
from kdjax.lm._on_policy import on_policy_batch
from kdjax.lm._on_policy import on_policy_keys
from kdjax.lm._on_policy import on_policy_step
from kdjax.lm._routing import ROUTED_INPUTS_KEY
from kdjax.lm._routing import TEACHER_ID_KEY
from kdjax.lm._routing import check_teacher_ids
from kdjax.lm._routing import route_teachers
from kdjax.lm._routing import routed_teacher
from kdjax.lm._sampled_targets import SAMPLED_WEIGHTINGS
from kdjax.lm._sampled_targets import sample_teacher_targets
from kdjax.lm._sampled_targets import sampled_kd_term
from kdjax.lm._tokenizers import BpeTokenizer
from kdjax.lm._tokenizers import ByteTokenizer
from kdjax.lm._tokenizers import Encoding

__all__ = [
    "CHUNKED_KINDS",
    "chunked_divergence",
    "chunked_kd_term",
    "decode_step",
    "generate",
    "pack_sequences",
    "prefill",
    "sample_logits",
    "SAMPLED_WEIGHTINGS",
    "TOPK_INDICES_KEY",
    "TOPK_VALUES_KEY",
    "TeacherCache",
    "attention_kl_term",
    "attention_mse_term",
    "batches",
    "beam_search",
    "cached_sparse_kd_term",
    "greedy_decode",
    "hidden_cosine_term",
    "hidden_mse_term",
    "mapped_taps",
    "perplexity",
    "sequence_kd_dataset",
    "sequence_windows",
    "skew_kl_term",
    "skew_reverse_kl_term",
    "sparse_kd_term",
    "token_cross_entropy_term",
    "token_jensen_shannon_term",
    "token_kd_term",
    "token_mask",
    "token_reverse_kd_term",
    "uniform_layer_map",
    "CROSS_TOKENIZER_LOSSES",
    "TEACHER_TOKENS_KEY",
    "align_spans",
    "cross_tokenizer_losses",
    "cross_tokenizer_term",
    "cross_tokenizer_windows",
    "gather_positions",
    "TARGET_BYTES_KEY",
    "bits_per_byte",
    "OnPolicyConfig",
    "generalized_jsd_term",
    "on_policy_batch",
    "on_policy_keys",
    "on_policy_step",
    "ROUTED_INPUTS_KEY",
    "TEACHER_ID_KEY",
    "check_teacher_ids",
    "route_teachers",
    "routed_teacher",
    "sample_teacher_targets",
    "sampled_kd_term",
    "BpeTokenizer",
    "ByteTokenizer",
    "Encoding",
]
