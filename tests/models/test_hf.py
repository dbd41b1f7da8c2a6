"""from_hf / save_hf against transformers itself, on tiny random checkpoints made here."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128)


def _configs():
  t = transformers
  return {
      # llama3 rope scaling with a short original context, so the scaling changes the result.
      "llama": t.LlamaConfig(**COMMON, rope_parameters={
          "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
      "qwen2": t.Qwen2Config(**COMMON, tie_word_embeddings=True),
      "qwen3": t.Qwen3Config(**COMMON, head_dim=16),
      "gemma2": t.Gemma2Config(**COMMON, head_dim=8, sliding_window=4, query_pre_attn_scalar=12,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
      "gemma3": t.Gemma3TextConfig(
          **COMMON, head_dim=8, sliding_window=4,
          layer_types=["sliding_attention", "full_attention"],
          rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                              "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
  }


FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 12))


def _logits(hf_model, tokens=TOKENS):
  with torch.no_grad():
    return hf_model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (directory, reference logits) of a tiny random transformers model."""
  out = {}
  for name, config in _configs().items():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    with torch.no_grad():  # Perturb the norms (initialised to 0 or 1) so they matter.
      for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    directory = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(directory)
    out[name] = (directory, _logits(model))
  return out


def _relative_error(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_logits_match_transformers(checkpoints, family):
  directory, reference = checkpoints[family]
  model = models.from_hf(directory)
  out, _ = model.apply(model.params, model.model_state, jnp.asarray(TOKENS, jnp.int32),
                       train=False, rng=None)
  assert out.logits.dtype == jnp.float32
  assert _relative_error(out.logits, reference) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_hf_reloads_in_transformers_to_the_same_logits(checkpoints, family, tmp_path):
  directory, reference = checkpoints[family]
  model = models.from_hf(directory)
  saved = models.save_hf(model, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved).eval()
  assert type(reloaded).__name__ == models.HF_ARCHITECTURES[model.apply.module.config.family]
  assert _relative_error(_logits(reloaded), reference) < 1e-4
  with pytest.raises(FileExistsError, match="overwrite=True"):
    models.save_hf(model, saved)


def test_a_fresh_decoder_saves_and_reloads(tmp_path):
  config = models.zoo.DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                                    family="qwen3", qk_norm=True)
  model = models.decoder_model(config, rng=jax.random.key(0))
  tokens = TOKENS[:, :6] % 64
  out, _ = model.apply(model.params, {}, jnp.asarray(tokens, jnp.int32), train=False)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      models.save_hf(model, str(tmp_path / "s"))).eval()
  assert _relative_error(out.logits, _logits(reloaded, tokens)) < 1e-4


def test_a_config_its_family_cannot_express_is_refused(tmp_path):
  config = models.zoo.DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                                    family="llama", sandwich_norms=True)
  model = models.decoder_model(config, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="sandwich_norms"):
    models.save_hf(model, str(tmp_path / "s"))


def test_bfloat16_loading_stays_close(checkpoints):
  directory, reference = checkpoints["llama"]
  model = models.from_hf(directory, dtype=jnp.bfloat16)
  assert jax.tree.leaves(model.params)[0].dtype == jnp.bfloat16
  out, _ = model.apply(model.params, {}, jnp.asarray(TOKENS, jnp.int32), train=False)
  assert out.logits.dtype == jnp.float32
  assert _relative_error(out.logits, reference) < 0.05


def test_sharded_checkpoints_load(checkpoints, tmp_path):
  directory, reference = checkpoints["qwen3"]
  model = transformers.AutoModelForCausalLM.from_pretrained(directory)
  model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  loaded = models.from_hf(str(tmp_path))
  out, _ = loaded.apply(loaded.params, {}, jnp.asarray(TOKENS, jnp.int32), train=False)
  assert _relative_error(out.logits, reference) < 1e-4


def _copy_checkpoint(directory, target, edit_config=None, edit_tensors=None):
  from safetensors.numpy import load_file, save_file
  os.makedirs(target)
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  if edit_config:
    edit_config(config)
  if edit_tensors:
    edit_tensors(tensors)
  with open(os.path.join(target, "config.json"), "w") as f:
    json.dump(config, f)
  save_file(tensors, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
  return target


def test_bad_checkpoints_fail_with_one_line_naming_the_key(checkpoints, tmp_path):
  directory, _ = checkpoints["llama"]

  def arch(c):
    c["model_type"] = "mixtral"
  with pytest.raises(ValueError, match="model_type 'mixtral'") as e:
    models.from_hf(_copy_checkpoint(directory, str(tmp_path / "a"), edit_config=arch))
  assert "\n" not in str(e.value)

  def shape(t):
    t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:10]
  with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \[10, 32\]"):
    models.from_hf(_copy_checkpoint(directory, str(tmp_path / "b"), edit_tensors=shape))

  def missing(t):
    del t["model.norm.weight"]
  with pytest.raises(ValueError, match="'model.norm.weight' is missing"):
    models.from_hf(_copy_checkpoint(directory, str(tmp_path / "c"), edit_tensors=missing))

  def rope(c):
    c["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    models.from_hf(_copy_checkpoint(directory, str(tmp_path / "d"), edit_config=rope))

  with pytest.raises(FileNotFoundError, match="config.json"):
    models.from_hf(str(tmp_path / "nowhere"))


def test_load_tokenizer_reads_tokenizer_json(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = models.load_tokenizer(str(tmp_path))
  assert loaded.encode("hello world again").ids == [1, 2, 0]
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    models.load_tokenizer(str(tmp_path / "missing"))
