"""Hugging Face checkpoints in and out: ``from_hf``, ``save_hf``, ``load_tokenizer``.

A Hugging Face model directory holds ``config.json`` and its weights in ``model.safetensors``
(or shards listed by ``model.safetensors.index.json``). :func:`from_hf` reads both with
``safetensors``' numpy API (no torch) into the zoo's :class:`~kdjax.models.zoo.Decoder`;
:func:`save_hf` writes the same layout back, so ``transformers.AutoModelForCausalLM`` (or any
server reading that format) loads a distilled student. The mapping is one table:
``HF_ARCHITECTURES`` (``model_type`` -> class name) and :func:`_weight_names` (kdjax parameter
path <-> tensor name; linear kernels are stored ``[in, out]`` here, ``[out, in]`` there).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models._base import Model, PyTree
from kdjax.models._linen import from_linen
from kdjax.models.zoo._decoder import FULL, SLIDING, Decoder, DecoderConfig

HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_GEMMA = ("gemma2", "gemma3_text")
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh"}
_LAYER_TYPES = {"full_attention": FULL, "sliding_attention": SLIDING}
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
# Tensors some checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True, eq=False)
class DecoderApply:
  """The ``apply`` of a decoder :class:`~kdjax.models.Model`: the model protocol plus the Linen
  module (for key-value-cache decoding) and the ``config.json`` it was read from, if any.

  ``eq=False``: it hashes by identity, so it can be a static field of a jitted state.
  """

  module: Decoder
  forward: Callable[..., Any]
  source_config: Mapping[str, Any] | None = None

  def __call__(self, params, model_state, inputs, *, train: bool, rng: jax.Array | None = None):
    return self.forward(params, model_state, inputs, train=train, rng=rng)


def decoder_model(config: DecoderConfig, *, rng: jax.Array | None = None,
                  params: PyTree | None = None, dtype: Any = jnp.float32,
                  param_dtype: Any = None, taps: Sequence[str] = (), name: str = "decoder",
                  source_config: Mapping[str, Any] | None = None,
                  remat: bool = False) -> Model:
  """A :class:`~kdjax.models.Model` of the zoo's decoder, initialised from ``rng`` or given
  ``params``.

  Args:
    config: the architecture.
    rng: initialisation key (when ``params`` is None).
    params: the parameter tree (e.g. read by :func:`from_hf`).
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); logits are float32 either way.
    param_dtype: parameter dtype; defaults to ``dtype``.
    taps: feature paths (``'blocks_{i}'``, ``'blocks_{i}/attn_probs'``, ``'pre_logits'``,
      ``'head'``, ...), checked now.
    name: the model's label.
    source_config: the ``config.json`` dict it came from (kept for :func:`save_hf`).
    remat: rematerialise each block in the backward pass (less activation memory, the same
      values and gradients).

  Returns:
    A model whose ``apply`` takes tokens ``[B, L]`` or ``{'tokens', 'segment_ids',
    'positions'}`` and whose ``apply.module`` serves :func:`kdjax.lm.generate`.
  """
  module = Decoder(config, dtype=dtype, param_dtype=dtype if param_dtype is None else param_dtype,
                   remat=remat)
  example = jnp.zeros((1, 2), jnp.int32)
  if params is None:
    if rng is None:
      raise ValueError("decoder_model needs rng= (to initialise) or params=")
    params = jax.jit(module.init)(rng, example)["params"]
  base = from_linen(module, {"params": params}, taps=taps, name=name,
                    example_input=jax.ShapeDtypeStruct(example.shape, example.dtype))
  apply = DecoderApply(module=module, forward=base.apply,
                       source_config=None if source_config is None else dict(source_config))
  return dataclasses.replace(base, apply=apply)


def decoder_module(model: Model) -> Decoder:
  """The Linen :class:`Decoder` behind a model from :func:`from_hf` / :func:`decoder_model`."""
  apply = getattr(model, "apply", None)
  if not isinstance(apply, DecoderApply):
    raise TypeError(f"model {getattr(model, 'name', model)!r} is not a kdjax decoder; key-value "
                    "cache decoding needs a model from kdjax.models.from_hf or "
                    "kdjax.models.decoder_model (use kdjax.lm.greedy_decode for other models)")
  return apply.module


# config.json <-> DecoderConfig --------------------------------------------------------------


def _rope_entry(entry: Mapping[str, Any] | None, where: str) -> tuple[float, dict[str, Any]]:
  entry = dict(entry or {})
  theta = float(entry.pop("rope_theta", 10000.0))
  if "type" in entry and "rope_type" not in entry:
    entry["rope_type"] = entry.pop("type")
  entry.pop("type", None)
  if entry.get("rope_type", "default") == "default":
    return theta, {}
  if entry["rope_type"] not in ("linear", "llama3"):
    raise ValueError(f"{where}.rope_type {entry['rope_type']!r} is not supported by kdjax's "
                     "decoder (it implements 'default', 'linear' and 'llama3')")
  return theta, entry


def _rope_from_hf(hf: Mapping[str, Any]):
  """``(theta, scaling, local_theta, local_scaling)`` from either config.json layout."""
  params = hf.get("rope_parameters")
  if params is None:  # transformers < 5: rope_theta / rope_scaling / rope_local_base_freq
    gemma3 = hf.get("model_type") == "gemma3_text"
    theta, scaling = _rope_entry({"rope_theta": hf.get("rope_theta", 1e6 if gemma3 else 1e4),
                                  **(hf.get("rope_scaling") or {})}, "rope_scaling")
    local = hf.get("rope_local_base_freq", 10000.0 if gemma3 else None)
    return theta, scaling, (None if local is None else float(local)), ({} if gemma3 else None)
  if "full_attention" in params or "sliding_attention" in params:
    theta, scaling = _rope_entry(params.get("full_attention"), "rope_parameters.full_attention")
    if "sliding_attention" not in params:
      return theta, scaling, None, None
    local_theta, local_scaling = _rope_entry(params["sliding_attention"],
                                             "rope_parameters.sliding_attention")
    return theta, scaling, local_theta, local_scaling
  theta, scaling = _rope_entry(params, "rope_parameters")
  return theta, scaling, None, None


def _layer_types(hf: Mapping[str, Any], family: str, n: int) -> tuple[str, ...]:
  if hf.get("layer_types") is not None:
    types = list(hf["layer_types"])
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
      raise ValueError(f"config.json layer_types holds {unknown}; kdjax's decoder knows "
                       f"{sorted(_LAYER_TYPES)}")
    if len(types) != n:
      raise ValueError(f"config.json layer_types has {len(types)} entries for "
                       f"num_hidden_layers={n}")
    return tuple(_LAYER_TYPES[t] for t in types)
  if family == "gemma2":
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n))
  if family == "gemma3_text":
    pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n))
  if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
    first = int(hf.get("max_window_layers", n))
    return tuple(SLIDING if i >= first else FULL for i in range(n))
  return (FULL,) * n


def config_from_hf(hf: Mapping[str, Any]) -> DecoderConfig:
  """A :class:`DecoderConfig` from a Hugging Face ``config.json`` dict.

  Raises:
    ValueError: an architecture kdjax does not implement, or a setting it does not (the
      message names the key).
  """
  family = hf.get("model_type")
  if family not in HF_ARCHITECTURES:
    raise ValueError(f"config.json model_type {family!r} (architectures "
                     f"{hf.get('architectures')}) is not supported; kdjax.models.from_hf reads "
                     f"{sorted(HF_ARCHITECTURES)}")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if key not in hf:
      raise ValueError(f"config.json has no {key!r}; it is needed to build a {family} model")
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError("config.json partial_rotary_factor != 1 is not supported")
  if hf.get("use_bidirectional_attention"):
    raise ValueError("config.json use_bidirectional_attention=true is not supported (kdjax's "
                     "decoder is causal)")
  n = int(hf["num_hidden_layers"])
  heads = int(hf["num_attention_heads"])
  gemma_act = family in _GEMMA and hf.get("hidden_activation")
  act_key = "hidden_activation" if gemma_act else "hidden_act"
  act = hf.get(act_key, "gelu_pytorch_tanh" if family in _GEMMA else "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"config.json {act_key} {act!r} is not supported; kdjax's decoder "
                     f"implements {sorted(_ACTIVATIONS)}")
  theta, scaling, local_theta, local_scaling = _rope_from_hf(hf)
  layer_types = _layer_types(hf, family, n)
  bias = bool(hf.get("attention_bias", False))
  gemma = family in _GEMMA
  return DecoderConfig(
      vocab_size=int(hf["vocab_size"]),
      hidden_size=int(hf["hidden_size"]),
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=n,
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
      rope_theta=theta,
      rope_scaling=scaling,
      local_rope_theta=local_theta,
      local_rope_scaling=local_scaling,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      norm_plus_one=gemma,
      activation=_ACTIVATIONS[act],
      tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
      qkv_bias=True if family == "qwen2" else bias,
      o_bias=False if family == "qwen2" else bias,
      mlp_bias=bool(hf.get("mlp_bias", False)),
      qk_norm=family in ("qwen3", "gemma3_text"),
      embed_scale=gemma,
      sandwich_norms=gemma,
      attn_softcap=(hf.get("attn_logit_softcapping", 50.0 if family == "gemma2" else None)
                    if gemma else None),
      final_softcap=(hf.get("final_logit_softcapping", 30.0 if family == "gemma2" else None)
                     if gemma else None),
      sliding_window=int(hf["sliding_window"]) if SLIDING in layer_types else None,
      layer_types=layer_types if SLIDING in layer_types else (),
      query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256) if gemma else None,
      family=family)


def _rope_dict(theta: float, scaling) -> dict[str, Any]:
  scaling = dict(scaling or ())
  return {"rope_type": scaling.pop("rope_type", "default"), "rope_theta": theta, **scaling}


def config_to_hf(config: DecoderConfig, base: Mapping[str, Any] | None = None,
                 dtype: Any = jnp.float32) -> dict[str, Any]:
  """The ``config.json`` dict (transformers 5 layout) of ``config``, over the keys of ``base``.

  Raises:
    ValueError: ``config`` has a setting its ``family`` cannot express (the message names it).
  """
  c = config
  family = c.family
  if family not in HF_ARCHITECTURES:
    raise ValueError(f"DecoderConfig.family {family!r} has no Hugging Face architecture; use "
                     f"one of {sorted(HF_ARCHITECTURES)}")
  hf = {k: v for k, v in dict(base or {}).items()
        if k not in ("rope_theta", "rope_scaling", "rope_local_base_freq", "torch_dtype",
                     "sliding_window_pattern", "_sliding_window_pattern")}
  layer_types = [("sliding_attention" if c.layer_type(i) == SLIDING else "full_attention")
                 for i in range(c.num_layers)]
  hf.update({
      "architectures": [HF_ARCHITECTURES[family]],
      "model_type": family,
      "vocab_size": c.vocab_size,
      "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "rms_norm_eps": c.rms_norm_eps,
      "tie_word_embeddings": c.tie_embeddings,
      "layer_types": layer_types,
      "sliding_window": c.sliding_window,
      "dtype": jnp.dtype(dtype).name,
  })
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[c.activation]
  if family in _GEMMA:
    hf.update({"hidden_activation": act, "attention_bias": c.qkv_bias,
               "query_pre_attn_scalar": c.query_pre_attn_scalar,
               "attn_logit_softcapping": c.attn_softcap,
               "final_logit_softcapping": c.final_softcap})
  else:
    hf.update({"hidden_act": act})
    if family == "qwen2":
      hf.update({"use_sliding_window": c.sliding_window is not None, "max_window_layers": 0})
    else:
      hf.update({"attention_bias": c.qkv_bias})
    if family == "llama":
      hf["mlp_bias"] = c.mlp_bias
  if family == "gemma3_text":
    local_theta = c.rope_theta if c.local_rope_theta is None else c.local_rope_theta
    local_scaling = c.rope_scaling if c.local_rope_scaling is None else c.local_rope_scaling
    hf["rope_parameters"] = {"full_attention": _rope_dict(c.rope_theta, c.rope_scaling),
                             "sliding_attention": _rope_dict(local_theta, local_scaling)}
  else:
    hf["rope_parameters"] = _rope_dict(c.rope_theta, c.rope_scaling)
  # The family must describe this exact architecture: read it back and compare.
  back = config_from_hf(hf)
  if family == "gemma3_text" and c.local_rope_theta is None:
    back = dataclasses.replace(back, local_rope_theta=None, local_rope_scaling=None)
  for field in dataclasses.fields(DecoderConfig):
    mine, theirs = getattr(c, field.name), getattr(back, field.name)
    if mine != theirs:
      raise ValueError(f"a {family} checkpoint cannot express DecoderConfig.{field.name}="
                       f"{mine!r} (the format implies {theirs!r}); choose a family whose "
                       "architecture has it, or change the setting")
  return hf


# Weights ------------------------------------------------------------------------------------


def _weight_names(config: DecoderConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
  """kdjax parameter path -> (Hugging Face tensor name, transposed)."""
  c = config
  names = {("embed", "embedding"): ("model.embed_tokens.weight", False),
           ("final_norm", "scale"): ("model.norm.weight", False)}
  if not c.tie_embeddings:
    names[("lm_head",)] = ("lm_head.weight", True)
  for i in range(c.num_layers):
    block, hf = f"blocks_{i}", f"model.layers.{i}"
    names[(block, "input_norm", "scale")] = (f"{hf}.input_layernorm.weight", False)
    names[(block, "post_attn_norm", "scale")] = (f"{hf}.post_attention_layernorm.weight", False)
    if c.sandwich_norms:
      names[(block, "pre_mlp_norm", "scale")] = (f"{hf}.pre_feedforward_layernorm.weight", False)
      names[(block, "post_mlp_norm", "scale")] = (f"{hf}.post_feedforward_layernorm.weight",
                                                  False)
    for proj, bias in (("q_proj", c.qkv_bias), ("k_proj", c.qkv_bias), ("v_proj", c.qkv_bias),
                       ("o_proj", c.o_bias)):
      names[(block, proj, "kernel")] = (f"{hf}.self_attn.{proj}.weight", True)
      if bias:
        names[(block, proj, "bias")] = (f"{hf}.self_attn.{proj}.bias", False)
    if c.qk_norm:
      names[(block, "q_norm", "scale")] = (f"{hf}.self_attn.q_norm.weight", False)
      names[(block, "k_norm", "scale")] = (f"{hf}.self_attn.k_norm.weight", False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
      names[(block, proj, "kernel")] = (f"{hf}.mlp.{proj}.weight", True)
      if c.mlp_bias:
        names[(block, proj, "bias")] = (f"{hf}.mlp.{proj}.bias", False)
  return names


def _weight_files(directory: str) -> list[str]:
  index = os.path.join(directory, _INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map", {})
    return sorted({os.path.join(directory, v) for v in weight_map.values()})
  single = os.path.join(directory, _WEIGHTS_FILE)
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(f"{directory} has neither {_WEIGHTS_FILE} nor {_INDEX_FILE}; point "
                          "at a Hugging Face model directory saved with safetensors")


def _read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, _CONFIG_FILE)
  if not os.path.isdir(directory) or not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; from_hf reads a Hugging Face model "
                            "directory (config.json and model.safetensors)")
  with open(path) as f:
    return json.load(f)


def _check_dtype(dtype):
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
  return dtype


def from_hf(directory: str, *, dtype: Any = jnp.float32, param_dtype: Any = None,
            taps: Sequence[str] = (), name: str | None = None, remat: bool = False) -> Model:
  """Loads a Hugging Face causal LM directory (Llama, Qwen2, Qwen3, Gemma 2, Gemma 3 text).

  Reads ``config.json`` and the safetensors weights with numpy (no torch), checks every tensor
  against the shape the config implies, and returns the zoo's decoder with those weights.

  Args:
    directory: the model directory (``save_pretrained`` output or a downloaded snapshot).
    dtype: compute dtype, ``jnp.float32`` or ``jnp.bfloat16``.
    param_dtype: the parameters' dtype; defaults to ``dtype``.
    taps: feature paths to return (see :class:`~kdjax.models.zoo.Decoder`).
    name: the model's label (default: the directory's name).
    remat: rematerialise each block in the backward pass (less activation memory, the same
      values and gradients).

  Returns:
    A :class:`~kdjax.models.Model`: ``model.apply(model.params, model.model_state, tokens,
    train=False, rng=None)`` gives float32 logits ``[B, L, V]``.

  Raises:
    ValueError: an unsupported architecture or setting, a missing, unexpected or misshapen
      tensor (one line naming the key).

  Example::

    teacher = kdjax.models.from_hf("/models/Qwen3-0.6B", dtype=jnp.bfloat16,
                                   taps=("pre_logits", "head"))
  """
  from safetensors.numpy import load_file  # the 'hf' extra

  dtype = _check_dtype(dtype)
  param_dtype = _check_dtype(dtype if param_dtype is None else param_dtype)
  hf = _read_config(directory)
  config = config_from_hf(hf)
  module = Decoder(config, dtype=dtype, param_dtype=param_dtype)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  expected = {tuple(str(getattr(e, "key", e)) for e in path): leaf.shape
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  names = _weight_names(config)
  tensors: dict[str, np.ndarray] = {}
  for path in _weight_files(directory):
    tensors.update(load_file(path))
  wanted = {hf_name for hf_name, _ in names.values()}
  unexpected = sorted(k for k in tensors if k not in wanted
                      and not k.endswith(_IGNORED_SUFFIXES)
                      and not (config.tie_embeddings and k == "lm_head.weight"))
  if unexpected:
    raise ValueError(f"{directory}: tensor {unexpected[0]!r} has no place in a {config.family} "
                     f"model built from config.json ({len(unexpected)} unexpected tensors)")
  flat = {}
  for path, shape in expected.items():
    hf_name, transpose = names[path]
    if hf_name not in tensors:
      raise ValueError(f"{directory}: tensor {hf_name!r} is missing (config.json implies it)")
    value = tensors[hf_name]
    value = value.T if transpose else value
    if tuple(value.shape) != tuple(shape):
      got = value.T.shape if transpose else value.shape
      want = tuple(reversed(shape)) if transpose else tuple(shape)
      raise ValueError(f"{directory}: tensor {hf_name!r} has shape {list(got)} but config.json "
                       f"implies {list(want)}")
    flat[path] = jnp.asarray(value.astype(np.float32) if value.dtype != param_dtype else value,
                             param_dtype)
  params = _unflatten(flat)
  return decoder_model(config, params=params, dtype=dtype, param_dtype=param_dtype, taps=taps,
                       name=name or os.path.basename(os.path.normpath(directory)),
                       source_config=hf, remat=remat)


def save_hf(model: Model, directory: str, *, params: PyTree | None = None,
            overwrite: bool = False) -> str:
  """Writes a decoder as a Hugging Face model directory (``config.json`` + ``model.safetensors``).

  ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads it to the same
  logits. Keys of the ``config.json`` the model was read from (token ids, ...) are kept; the
  architecture keys are rewritten from the model's :class:`DecoderConfig`.

  Args:
    model: a decoder from :func:`from_hf` or :func:`decoder_model`.
    directory: where to write; created if needed.
    params: the parameters to save (e.g. a trained state's ``params['student']``); default
      ``model.params``.
    overwrite: replace an existing ``config.json`` / weights there (refused otherwise).

  Returns:
    ``directory``.
  """
  from safetensors.numpy import save_file  # the 'hf' extra

  module = decoder_module(model)
  config = module.config
  params = model.params if params is None else params
  names = _weight_names(config)
  leaves = {tuple(str(getattr(e, "key", e)) for e in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  missing = sorted(set(names) - set(leaves))
  if missing:
    raise ValueError(f"params have no {'/'.join(missing[0])}; pass the decoder's parameters")
  dtype = jnp.dtype(jax.tree.leaves(params)[0].dtype)
  hf = config_to_hf(config, getattr(model.apply, "source_config", None), dtype)
  os.makedirs(directory, exist_ok=True)
  targets = [os.path.join(directory, f) for f in (_CONFIG_FILE, _WEIGHTS_FILE, _INDEX_FILE)]
  existing = [t for t in targets if os.path.exists(t)]
  if existing and not overwrite:
    raise FileExistsError(f"{existing[0]} exists; save into a new directory or pass "
                          "overwrite=True")
  tensors = {}
  for path, (hf_name, transpose) in names.items():
    value = np.asarray(jax.device_get(leaves[path]))
    tensors[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  for stale in existing:
    os.remove(stale)
  save_file(tensors, os.path.join(directory, _WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(directory, _CONFIG_FILE), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  return directory


def load_tokenizer(directory: str):
  """The ``tokenizers.Tokenizer`` of a Hugging Face directory's ``tokenizer.json``.

  ``tokenizer.encode(text).ids`` gives the token ids a decoder from :func:`from_hf` reads.
  """
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; a tokenizer is read from the model "
                            "directory's tokenizer.json (the 'tokenizers' library format)")
  from tokenizers import Tokenizer  # the 'hf' extra

  return Tokenizer.from_file(path)


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree
