"""Bad input through the public API: a clear error naming the value and the allowed range,
or (for data) repaired, skipped and counted, never a crash.

Complements tests/test_model.py (train_step ids), tests/test_train_cli.py (generate's
arguments), tests/test_evaluate.py (out-of-range ids) and tests/test_data.py (readers).
"""

import json

import numpy as np
import pytest

from experiments.configs import tiny
from neurogen_jax import data, evaluate
from neurogen_jax import train as train_lib
from neurogen_jax.config import AreaSpec, BrainConfig, PathwaySpec, tiny_config
from neurogen_jax.model import NeuroGenModel
from neurogen_jax.tokenizer import ByteTokenizer

V = 257


@pytest.fixture(scope="module")
def model():
  return NeuroGenModel(vocab_size=V, embedding_dim=64, config=tiny_config())


@pytest.fixture(scope="module")
def params(model):
  return model.config, model.params


# ----------------------------------------------------------------------- token ids


@pytest.mark.parametrize("prompt, message", [
    ([[1, 2], [3, 4]], r"prompt_token_ids must be \[L\] or \[1, L\] token ids, got shape \(2, 2\)"),
    (np.zeros((1, 2, 2), np.int32), r"got shape \(1, 2, 2\)"),
    (7, r"got shape \(\)"),
    ("The cat", "got text; encode it with the tokenizer"),
    ([1.0, 2.0], "must be a flat sequence of integer token ids, got float64"),
    ([True, False], "integer token ids, got bool"),
    ([1, V], rf"holds \[{V}\], outside \[0, {V}\)"),
    (np.array([-3, 1], np.int64), rf"holds \[-3\], outside \[0, {V}\)"),
    ([], "prompt_ids is empty"),
    (np.zeros((1, 0), np.int32), "prompt_ids is empty"),
])
def test_model_generate_rejects_bad_prompts(model, prompt, message):
  with pytest.raises(ValueError, match=message):
    model.generate(prompt, max_length=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_length=-1), "max_length must be >= 1, got -1"),
    (dict(max_length=0), "max_length must be >= 1, got 0"),
    (dict(max_length=1.5), r"max_length must be an integer, got 1.5"),
    (dict(temperature=-0.1), r"temperature must be a finite number >= 0 \(0 = greedy\), got -0.1"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (dict(top_k=V + 1), rf"top_k must be <= {V} \(the vocabulary size\), got {V + 1}"),
    (dict(top_k=-2), "top_k must be >= 0, got -2"),
])
def test_model_generate_rejects_bad_arguments(model, kwargs, message):
  with pytest.raises(ValueError, match=message):
    model.generate([1, 2], **kwargs)


def test_model_generate_takes_a_batch_of_one(model):
  flat = model.generate([72, 105], max_length=3, temperature=0)
  assert len(flat) == 3 and all(0 <= t < V for t in flat)
  assert model.generate(np.array([[72, 105]], np.int64), max_length=3, temperature=0) == flat


def test_model_train_step_rejects_bad_shapes_and_dtypes(model):
  with pytest.raises(ValueError, match=r"input_ids must be \[L\] or \[B, L\], got shape \(1, 2, 2\)"):
    model.train_step(np.ones((1, 2, 2), np.int32), np.ones((1, 2, 2), np.int32))
  with pytest.raises(ValueError, match="input_ids must be integer token ids, got dtype <U1"):
    model.train_step(["a", "b"], [1, 2])
  with pytest.raises(ValueError, match=rf"target_ids contains token id {V}, outside \[0, {V}\)"):
    model.train_step([1, 2], [3, V])


@pytest.mark.parametrize("ids, message", [
    ([1.7, 2.2, 3.0], "token_ids must be integer token ids, got dtype float64"),
    ("hello", "token_ids must be token ids, got text"),
    ([[1, 2], [3, 4]], r"token_ids must be a 1-D sequence of >= 2 ids, got shape \(2, 2\)"),
    ([], r"got shape \(0,\)"),
    ([4], r"got shape \(1,\)"),
    ([0, -1, 2], rf"inputs ids must lie in \[0, {V}\) .* got \[-1, 0\]"),
    ([0, 1, 10**6], rf"targets ids must lie in \[0, {V}\) .* got \[1, 1000000\]"),
])
def test_evaluate_rejects_bad_token_ids(params, ids, message):
  cfg, p = params
  with pytest.raises(ValueError, match=message):
    evaluate.evaluate_tokens(p, cfg, ids, 10)


# ------------------------------------------------------------------------ configs


def _areas(*sizes):
  return tuple(AreaSpec(name, size) for name, size in zip(("a", "b"), sizes))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(tile=12), ValueError, "tile must be a positive multiple of 8, got 12"),
    (dict(tile=0), ValueError, "tile must be a positive multiple of 8, got 0"),
    (dict(tile=16.0), TypeError, r"tile must be an integer, got 16.0 \(float\)"),
    (dict(scale=0), ValueError, "scale must be a finite number > 0, got 0"),
    (dict(scale=-0.5), ValueError, "scale must be a finite number > 0, got -0.5"),
    (dict(scale=float("nan")), ValueError, "scale must be a finite number > 0, got nan"),
    (dict(dt_ms=0.0), ValueError, "dt_ms must be a finite number > 0, got 0.0"),
    (dict(vocab_size=0), ValueError, "embedding_dim and vocab_size must be >= 1, got 64, 0"),
    (dict(embedding_dim=-4), ValueError, "embedding_dim and vocab_size must be >= 1, got -4"),
    (dict(fan_in_tiles=0), ValueError, "fan_in_tiles must be >= 1, got 0"),
    (dict(neuron_model="lif"), ValueError, "neuron_model must be 'alif' or 'izhikevich', got 'lif'"),
    (dict(readout_area="cortex"), ValueError, r"area 'cortex' \(input/readout\) is not one of"),
])
def test_brain_config_rejects_bad_fields(kwargs, error, message):
  with pytest.raises(error, match=message):
    tiny_config(**kwargs)


def test_brain_config_rejects_areas_and_pathways_that_do_not_fit():
  base = dict(input_areas=("a",), readout_area="b", phases=())
  with pytest.raises(ValueError, match=r"pathway a->c names area 'c', which is not one of \['a', 'b'\]"):
    BrainConfig(areas=_areas(64, 64), pathways=(PathwaySpec("a", "c", 1.0),), **base)
  with pytest.raises(ValueError, match="area 'a' receives no pathway; add one"):
    BrainConfig(areas=_areas(64, 64), pathways=(PathwaySpec("a", "b", 1.0),), **base)
  with pytest.raises(ValueError, match=r"area 'b': size must be an integer >= 1 .* got 0"):
    BrainConfig(areas=_areas(64, 0), pathways=(PathwaySpec("a", "b", 1.0),), **base)
  with pytest.raises(ValueError, match=r"area 'a': excitatory_fraction must be in \[0, 1\], got 1.5"):
    BrainConfig(areas=(AreaSpec("a", 64, 1.5), AreaSpec("b", 64)), **base)
  with pytest.raises(ValueError, match="areas is empty"):
    BrainConfig(areas=(), pathways=(), **base)


def test_area_sizes_that_are_not_tile_multiples_are_rounded_to_whole_tiles():
  cfg = BrainConfig(areas=_areas(100, 7), pathways=(PathwaySpec("a", "b", 1.0),
                                                    PathwaySpec("b", "a", 1.0)),
                    input_areas=("a",), readout_area="b", phases=(), tile=16)
  assert cfg.area_sizes == (96, 16)  # 100 -> 6 tiles; 7 -> at least one tile
  assert cfg.num_neurons == 112 and cfg.num_blocks == 7


# ------------------------------------------------------------------------ tokenizer


def test_byte_tokenizer_names_what_it_cannot_take():
  t = ByteTokenizer()
  with pytest.raises(TypeError, match=r"encode wants a str, got bytes \(decode the bytes"):
    t.encode(b"abc")
  with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at position 2"):
    t.encode("ab\ud800c")
  with pytest.raises(ValueError, match=r"decode got token id 257, outside \[0, 257\)"):
    t.decode([65, 257])
  with pytest.raises(TypeError, match=r"decode wants integer token ids, got 1.5 \(float\)"):
    t.decode([65, 1.5])
  assert t.decode(np.array([72, 105, 256], np.int32)) == "Hi"
  assert t.encode("") == [] and t.decode([]) == ""


# -------------------------------------------------------------------------- data


def test_empty_non_utf8_and_huge_line_files_are_read_counted_and_reported(tmp_path, capsys):
  files = tmp_path / "texts"
  files.mkdir()
  (files / "0_empty.txt").write_bytes(b"")
  (files / "1_latin1.txt").write_bytes("caf\xe9 cr\xe8me, na\xefve. ".encode("latin-1") * 30)
  huge = "All the world's a stage. " * 40_000  # ~1 MB on one line
  (files / "2_huge.jsonl").write_text(json.dumps({"text": huge}) + "\n\n")
  docs = data.FileDocuments(data.resolve_files(files))
  iterator = iter(docs)
  texts = list(iterator)
  assert [len(t) for t in texts] == [len("caf\ufffd cr\ufffdme, na\ufffdve. ") * 30, len(huge)]
  assert iterator.stats == data.ReadStats(documents=2, empty_skipped=2, replacement_chars=90)

  config = tiny.get_config()
  config.run_dir, config.data.files = str(tmp_path / "run"), str(files)
  config.train.max_chunks, config.train.log_interval = 2, 2
  result = train_lib.Trainer(config).train()
  assert result.step == 2
  line = [l for l in capsys.readouterr().err.splitlines() if l.startswith("step 2 |")][0]
  assert "| data: 2 documents, 1 empty skipped, 90 invalid UTF-8 sequences replaced" in line
  record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert (record["data/documents"], record["data/empty_skipped"],
          record["data/replacement_chars"]) == (2, 1, 90)
