"""Bits per byte: a language model's loss in units that do not depend on its tokenizer."""
from __future__ import annotations

import math

import numpy as np

# The batch entry holding the bytes of text each target token spells (int ``[B, L]``): what
# evaluation sums to turn a summed NLL into bits per byte. Data without it is byte-level (one
# byte per token).
TARGET_BYTES_KEY = "target_bytes"


def bits_per_byte(nll_nats: float | np.ndarray, num_bytes: int | np.ndarray) -> float | np.ndarray:
  r"""Summed next-token negative log-likelihood (nats) of a text, per byte of that text, in bits.

  .. math::
    \mathrm{bpb} = \frac{\sum_i -\ln p(y_i \mid y_{<i})}{\ln 2 \cdot N_\text{bytes}}

  Two models with different tokenizers predict the same text with different token counts, so
  per-token perplexities do not compare; the total log-likelihood of the text does, and dividing
  it by the text's byte count (a tokenizer-free length) gives a rate that does. For a byte-level
  model it is the mean token NLL over ``ln 2``; ``2 ** (bpb * bytes / tokens)`` is the
  perplexity of a model with ``tokens`` tokens.

  Args:
    nll_nats: the sum of the token NLLs over the evaluated targets, in nats (a scalar or an
      array of per-run sums).
    num_bytes: the UTF-8 bytes of text those targets spell (special tokens spell none), ``> 0``;
      e.g. the sum of ``batch['target_bytes']`` over the kept targets.

  Returns:
    Bits per byte, a float (or an array shaped like the inputs).

  Examples:
    >>> from kdjax import lm
    >>> lm.bits_per_byte(100 * 0.6931471805599453, 100)
    1.0

  References:
    L. Gao et al., "The Pile: An 800GB Dataset of Diverse Text for Language Modeling", 2020
    (bits per UTF-8 byte to compare models with different tokenizers).
  """
  nll = np.asarray(nll_nats, np.float64)
  count = np.asarray(num_bytes)
  if not np.issubdtype(count.dtype, np.number) or np.any(count <= 0):
    raise ValueError(f"num_bytes must be positive byte counts, got {num_bytes!r}; count the "
                     "bytes of the evaluated targets (batch['target_bytes'] where the mask holds)")
  if np.any(~np.isfinite(nll)) or np.any(nll < 0):
    raise ValueError(f"nll_nats must be a finite, non-negative sum of token NLLs, got {nll_nats!r}")
  out = nll / (math.log(2.0) * count.astype(np.float64))
  return float(out) if out.ndim == 0 else out
