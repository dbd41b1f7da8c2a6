"""Independent float64 numpy formulas the strategy tests compare against."""
import numpy as np


def softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def logits_of(model, x):
  out, _ = model.apply(model.params, model.model_state, x, train=False, rng=None)
  return np.asarray(out.logits, np.float64)


def kl(p, q):
  """KL(p || q) per row."""
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)
