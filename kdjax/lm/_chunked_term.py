"""Token divergence terms computed from hidden states and heads, chunk by chunk.

:func:`chunked_kd_term` is the objective term of :func:`kdjax.lm.chunked_divergence`: it reads
the ``pre_logits`` (final normalised hidden state) and ``head`` (``[D, V]``) taps of both models
(the zoo's decoder and every model of :func:`kdjax.models.from_hf` have them), so the token loss
never holds a ``[tokens, vocab]`` array of either model whole. :data:`CHUNKED_KINDS` maps the
config kinds of the token divergences that have this form to their ``beta``; a config term asks
for it with ``chunk_size`` (``{'kind': 'kd', 'temperature': 1.0, 'chunk_size': 512}``) and
gets the same loss as the plain term.
"""
from __future__ import annotations

from kdjax.losses import _language
from kdjax.losses import _utils as loss_utils
from kdjax.lm._chunked import chunked_divergence
from kdjax.lm._terms import token_mask
from kdjax.objectives import Needs, Term
from kdjax.objectives._base import no_params_init

PRE_LOGITS = "pre_logits"
HEAD = "head"
# Config kinds of token divergences with a chunked form -> their beta in chunked_divergence
# (each of these losses is T^2 times the generalized JSD of that beta).
CHUNKED_KINDS = {"kd": 0.0, "reverse_kd": 1.0, "jensen_shannon": 0.5}


def chunked_kd_term(*, beta: float = 0.0, temperature: float = 1.0, chunk_size: int = 512,
                    student_softcap: float | None = None, teacher_softcap: float | None = None,
                    mask_key: str | None = "mask") -> Term:
  r"""``T^2`` times the generalized JSD of the two models' tokens, from hidden states and heads.

  .. math::
    \ell = T^2\, \mathrm{JSD}_\beta\big(\mathrm{softmax}(h_t W_t / T),\,
           \mathrm{softmax}(h_s W_s / T)\big)

  averaged over the tokens ``batch[mask_key]`` keeps, computed ``chunk_size`` tokens at a time
  (:func:`kdjax.lm.chunked_divergence`). ``beta = 0`` is :func:`kdjax.losses.kd` (forward
  ``KL(p_t || p_s)``), ``1`` :func:`kdjax.losses.reverse_kd`, ``0.5``
  :func:`kdjax.losses.jensen_shannon`: the value equals those terms' on the models' logits.

  Args:
    beta: the generalized JSD weight in ``[0, 1]`` (TRL's convention).
    temperature: ``T > 0``; the loss is scaled by ``T^2`` (Hinton et al.), as kdjax's token KD
      terms are.
    chunk_size: tokens per chunk.
    student_softcap, teacher_softcap: the models' final-logit soft-capping (Gemma 2:
      ``final_logit_softcapping``), applied to each chunk's logits as the model applies it.
    mask_key: the batch's ``[B, L]`` (or ``[B]``) mask of real tokens; ``None``: every token.

  Returns:
    A :class:`~kdjax.objectives.Term` reading the ``pre_logits`` and ``head`` taps of both
    models (its ``needs`` say so, so the run builds the models with them).

  Examples:
    >>> from kdjax import lm
    >>> term = lm.chunked_kd_term(temperature=2.0, chunk_size=256)
    >>> term.needs.student
    ('pre_logits', 'head')

  References:
    G. Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (``T^2``);
    R. Agarwal et al., "On-Policy Distillation of Language Models" (GKD), 2024 (``beta``).
  """
  loss_utils.check_temperature(temperature)
  t2 = float(temperature) ** 2

  def apply(params, state, student_out, teacher_out, batch, step, *, axis_name=None):
    del params, step, axis_name
    if teacher_out is None:
      raise ValueError("chunked_kd_term reads the teacher's hidden states and head; give the "
                       "state a teacher")
    hs, ws = student_out.features[PRE_LOGITS], student_out.features[HEAD]
    ht, wt = teacher_out.features[PRE_LOGITS], teacher_out.features[HEAD]
    mask = token_mask(batch, mask_key, hs.shape[:-1])
    loss = t2 * chunked_divergence(hs, ws, ht, wt, mask=mask, beta=beta,
                                   temperature=temperature, chunk_size=chunk_size,
                                   student_softcap=student_softcap,
                                   teacher_softcap=teacher_softcap)
    return loss, state, {}

  # Checks beta and chunk_size now (a config error, not a failure inside the step).
  _check(beta, chunk_size)
  taps = (PRE_LOGITS, HEAD)
  return Term(no_params_init, apply, Needs(student=taps, teacher=taps,
                                           batch=(mask_key,) if mask_key else ()))


def _check(beta, chunk_size) -> None:
  _language.check_beta(beta)
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
