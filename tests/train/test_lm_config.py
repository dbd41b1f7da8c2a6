"""Language-model configs: Hugging Face directories as teacher and student, tokenizer.json data,
the model mesh axis and chunked token terms, each checked in resolve or before any work."""
import importlib.util
import json
import os
import re

import jax
import numpy as np
import pytest

from kdjax import lm
from kdjax import models
from kdjax.train import builders
from kdjax.train import config as config_lib
from kdjax.train import kinds
from kdjax.train import pipeline
from kdjax.train import rundata
from kdjax.train.errors import ConfigError

BYTE_VOCAB = 102  # distinct bytes of the bundled text (rundata.STDLIB_SOURCES)


def write_decoder(directory, *, vocab=BYTE_VOCAB, hidden=16, layers=1, family="llama", seed=0):
  """A tiny random decoder saved as a Hugging Face directory; returns the directory."""
  config = models.zoo.DecoderConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
      num_heads=4, num_kv_heads=2, head_dim=hidden // 4, rms_norm_eps=1e-5,
      qk_norm=family == "qwen3", family=family)
  model = models.decoder_model(config, rng=jax.random.key(seed))
  models.save_hf(model, str(directory))
  return str(directory)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {"teacher": write_decoder(root / "teacher", hidden=32, layers=2, seed=1),
          "student": write_decoder(root / "student", seed=2),
          "qwen3": write_decoder(root / "qwen3", family="qwen3", seed=3),
          "wide": write_decoder(root / "wide", vocab=BYTE_VOCAB + 6, seed=4)}


def lm_config(**sections):
  config = {"data": {"name": "text:stdlib", "sequence_length": 16, "eval_batch_size": 64},
            "batch_size": 16, "total_steps": 2, "log_every": 1, "progress_bar": False,
            "checked_steps": 0,
            "objective": {"ce": {"kind": "cross_entropy", "weight": 0.5, "label_key": "targets"},
                          "kd": {"kind": "kd", "weight": 0.5, "temperature": 2.0}}}
  for name, values in sections.items():
    config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
  return config


def test_a_hugging_face_teacher_needs_no_model_name_and_builds_with_from_hf(hf_dirs):
  config, data = pipeline.resolve(lm_config(teacher={"checkpoint": hf_dirs["teacher"]},
                                            student={"init": hf_dirs["student"]}))
  assert builders.hf_source(config.teacher) == ("checkpoint", hf_dirs["teacher"])
  assert builders.hf_source(config.student) == ("init", hf_dirs["student"])
  assert builders.model_name(config.teacher) == "llama"
  teacher = builders.make_model(config.teacher, side="teacher", input_shape=(16,),
                                rng=jax.random.key(0), taps=("pre_logits", "head"))
  reference = models.from_hf(hf_dirs["teacher"])
  tokens = data.valid["tokens"][:2]
  got, _ = teacher.apply(teacher.params, teacher.model_state, tokens, train=False, rng=None)
  want, _ = reference.apply(reference.params, reference.model_state, tokens, train=False,
                            rng=None)
  np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(want.logits))
  assert got.features["head"].shape == (32, BYTE_VOCAB)
  # The standard pipeline loads it (kind 'load') and reads its weights from the directory.
  decls = kinds.declarations(config)
  assert decls[0].kind == "load"
  ctx = kinds.Context(config=config, data=data, workdir="/nonexistent",
                      decls={d.name: d for d in decls})
  loaded = ctx.trained("teacher")
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                            loaded.params, reference.params)
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("section, message", [
    ({"student": {"model": "transformer_lm"}},
     "config.student.model='transformer_lm' but config.student.init="),
    ({"student": {"model_kwargs": {"hidden": (8,)}}},
     "config.student.model_kwargs={'hidden': (8,)} but the architecture comes from "),
    ({"student": {"dtype": "float16"}}, "config.student.dtype='float16'"),
])
def test_a_hugging_face_directory_that_disagrees_with_its_section_fails_in_resolve(
    hf_dirs, section, message):
  values = lm_config(student={"init": hf_dirs["student"], **section["student"]})
  with pytest.raises(ConfigError, match="^" + re.escape(message)):
    config_lib.resolve(values)


def test_the_directory_model_type_is_an_accepted_model_name(hf_dirs):
  config = config_lib.resolve(lm_config(student={"init": hf_dirs["qwen3"], "model": "qwen3"}))
  assert builders.model_name(config.student) == "qwen3"
  with pytest.raises(ConfigError, match="config.student.model='llama' but .* 'qwen3' model"):
    config_lib.resolve(lm_config(student={"init": hf_dirs["qwen3"], "model": "llama"}))


def test_bad_hugging_face_paths_name_their_key(hf_dirs, tmp_path):
  with pytest.raises(ConfigError, match=r"^config\.student\.init='.*' is not a Hugging Face"):
    config_lib.resolve(lm_config(student={"init": str(tmp_path)}))
  with pytest.raises(ConfigError, match=r"config\.teacher\.init and config\.teacher\.checkpoint"):
    config_lib.resolve(lm_config(teacher={"init": hf_dirs["teacher"],
                                          "checkpoint": hf_dirs["teacher"]}))
  unknown = tmp_path / "bert"
  unknown.mkdir()
  (unknown / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ConfigError, match=r"config\.student\.init=.* holds a 'bert' model"):
    config_lib.resolve(lm_config(student={"init": str(unknown)}))


def test_vocabularies_must_match_before_any_work(hf_dirs, tmp_path):
  with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint has a vocabulary of 102 "
                     r"tokens but config\.student\.init has 108"):
    config_lib.resolve(lm_config(teacher={"checkpoint": hf_dirs["teacher"]},
                                 student={"init": hf_dirs["wide"]}))
  # A model whose vocabulary is not the data's: refused when the runs are planned.
  config = lm_config(teacher={"checkpoint": hf_dirs["wide"]},
                     student={"model": "transformer_lm",
                              "model_kwargs": {"d_model": 16, "n_layers": 1, "n_heads": 2,
                                               "max_len": 16}})
  with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint=.* predicts 108 tokens but "
                     r"the data's vocabulary has 102 \(config\.data\.name, "
                     r"config\.data\.tokenizer\)"):
    pipeline.train_and_evaluate(config, tmp_path / "w")
  assert not (tmp_path / "w" / "config.json").exists()


def _tokenizer(path):
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, trainers
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["def f(x):\n  return x + 1\n", "import os\n"] * 20, trainer=trainer)
  tok.save(str(path))
  return tok


def test_text_data_reads_a_tokenizer_json(tmp_path):
  pytest.importorskip("tokenizers")
  tok = _tokenizer(tmp_path / "tokenizer.json")
  for given in (str(tmp_path), str(tmp_path / "tokenizer.json")):
    config, data = pipeline.resolve(lm_config(data={"tokenizer": given}))
    ids = np.asarray(tok.encode(rundata.stdlib_text().decode("utf-8")).ids)
    split = int(0.9 * len(ids))
    want = lm.sequence_windows(ids[:split], 16)
    np.testing.assert_array_equal(data.train["tokens"], want["tokens"])
    np.testing.assert_array_equal(data.train["targets"], want["targets"])
    assert data.vocab_size == tok.get_vocab_size() == config.student.num_classes
  # The default stays byte-level.
  _, data = pipeline.resolve(lm_config())
  assert data.vocab_size == BYTE_VOCAB


def test_the_stdlib_corpus_is_split_by_file():
  from kdjax import data as data_lib  # pylint: disable=g-import-not-at-top
  corpus = data_lib.stdlib_corpus()
  _, data = pipeline.resolve(lm_config(data={"name": "text:stdlib_corpus"}))
  vocab = np.unique(np.frombuffer(corpus.text("train") + corpus.text("validation"), np.uint8))
  assert data.vocab_size == len(vocab)
  # The windows spell the training files, then (evaluation) the validation files, byte for byte.
  assert vocab[data.train["tokens"][0]].tobytes() == corpus.text("train")[:16]
  assert data.split_text("valid") == corpus.text("validation")
  assert len(data.valid["tokens"]) == (len(corpus.text("validation")) - 1) // 16
  with pytest.raises(Exception, match=r"config\.data\.name='text:nope'.*'text:stdlib_corpus'"):
    pipeline.resolve(lm_config(data={"name": "text:nope"}))


def test_bad_tokenizer_settings_fail_in_resolve(tmp_path):
  with pytest.raises(ConfigError, match=r"^config\.data\.tokenizer=.*tokenizer\.json does not "
                     "exist"):
    config_lib.resolve(lm_config(data={"tokenizer": str(tmp_path)}))
  with pytest.raises(ConfigError, match=r"config\.data\.tokenizer is set but "
                     r"config\.data\.name='digits' is not a text dataset"):
    config_lib.resolve({"data": {"name": "digits", "tokenizer": str(tmp_path)}})


def test_mesh_model_reaches_the_runner_and_is_checked():
  config, data = pipeline.resolve(lm_config(mesh={"model": 2}))
  ctx = kinds.Context(config=config, data=data, workdir="/nonexistent", decls={})
  assert dict(ctx.runner().mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  with pytest.raises(ConfigError, match=r"^config\.parallel='pmap' is pure data parallelism "
                     r"but config\.mesh\.model=2; set config\.parallel='jit'"):
    config_lib.resolve(lm_config(parallel="pmap", mesh={"model": 2}))
  config, data = pipeline.resolve(lm_config(mesh={"model": 3}))
  ctx = kinds.Context(config=config, data=data, workdir="/nonexistent", decls={})
  with pytest.raises(ConfigError, match=r"config\.parallel / config\.mesh: .*not divisible by 3"):
    ctx.runner()


def test_chunk_size_turns_a_token_divergence_into_its_chunked_form():
  config = config_lib.resolve(lm_config(objective={
      "kd": {"kind": "kd", "temperature": 2.0, "chunk_size": 8}}))
  objective = builders.make_objective(config.objective)
  assert objective.needs.student == ("pre_logits", "head")
  assert objective.needs.teacher == ("pre_logits", "head")
  for spec, message in [
      ({"kind": "dkd", "chunk_size": 8}, "term kind 'dkd' has no chunked form"),
      ({"kind": "kd", "chunk_size": 0}, r"chunk_size must be an integer >= 1"),
      ({"kind": "kd", "chunk_size": 8, "beta": 0.5}, r"term kind 'kd' has beta=0\.0"),
      ({"kind": "kd", "chunk_size": 8, "student": "stage2"},
       r"takes no argument\(s\) \['student'\]"),
  ]:
    with pytest.raises(ConfigError, match=r"^config\.objective\.kd"):
      config_lib.resolve(lm_config(objective={"kd": spec}))
    with pytest.raises(ConfigError, match=message):
      config_lib.resolve(lm_config(objective={"kd": spec}))


def test_lm_configs_resolve():
  for name in ("distill", "hf_distill"):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if name == "hf_distill":
      config.teacher.checkpoint = ""  # the default directory may not exist here
      config.student.init = ""
      config.student.model = "transformer_lm"
      assert config.data.tokenizer == ""  # it follows the teacher's directory
      config.data.tokenizer = ""
    config_lib.resolve(config)
