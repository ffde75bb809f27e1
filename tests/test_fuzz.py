"""Hypothesis fuzzing of the public API: every outcome is valid output or a clear
ValueError/TypeError (DataSourceError, naming the file, for data), never a hang or
another exception.

Fuzzed: `generate` arguments (prompt shapes, lengths, dtypes, ids, max_length,
temperature, top_k), BrainConfig fields, tokenizer encode/decode of random text and ids,
and the data readers + packer on random files (empty, invalid UTF-8, NUL bytes, one huge
line). One tiny brain per module; valid generate calls use few distinct static
arguments, so only a handful of programs are compiled.
"""

import functools
import json
import math

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from neurogen_jax import brain, connectivity, data
from neurogen_jax import generate as generate_lib
from neurogen_jax import tokenizer as tokenizer_lib
from neurogen_jax.config import BrainConfig, seed_phases, tiny_config

V = 257
SETTINGS = hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                               suppress_health_check=list(hypothesis.HealthCheck))


def _clear_error(error: Exception) -> None:
  """A rejected input must come with a message a person can act on."""
  assert isinstance(error, (ValueError, TypeError)), repr(error)
  assert len(str(error)) > 15, repr(error)


@pytest.fixture(scope="module")
def tiny_brain():
  config = tiny_config(phases=seed_phases((1, 1, 1, 1, 1)))
  params, state = jax.jit(functools.partial(brain.init, config, batch=1))(jax.random.PRNGKey(0))
  return params, state, config


# ------------------------------------------------------------------------- generate

_VALID_DTYPES = ["int32", "int64", "uint8", "list"]
_BAD_DTYPES = ["float32", "bool", "object"]


def _mostly(valid, invalid):
  """Valid values about 4 times in 5, so that a fair share of calls reaches the brain."""
  return st.one_of(valid, valid, valid, valid, invalid)


@st.composite
def prompts(draw):
  length = draw(_mostly(st.just(2), st.just(0)))  # one valid length: one compiled prompt scan
  ids = draw(st.lists(_mostly(st.integers(0, V - 1), st.integers(-3, V + 3)), min_size=length,
                      max_size=length))
  dtype = draw(_mostly(st.sampled_from(_VALID_DTYPES), st.sampled_from(_BAD_DTYPES)))
  shape = draw(_mostly(st.just("flat"), st.sampled_from(["column", "nested"])))
  if dtype == "list":
    prompt = ids
  elif dtype == "object":
    prompt = np.array(ids + [None], dtype=object)
  else:
    prompt = np.array(ids).astype(dtype)
  if shape == "column":
    prompt = np.asarray(prompt).reshape(-1, 1)
  elif shape == "nested":
    prompt = [list(np.asarray(prompt).ravel())]
  return prompt


@hypothesis.settings(SETTINGS, max_examples=40)
@hypothesis.given(
    prompt=prompts(),
    max_length=_mostly(st.just(3), st.sampled_from([-1, 0, 2.5, True, None, "3"])),
    temperature=_mostly(st.floats(0, 3), st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([None, "hot", True]))),
    top_k=_mostly(st.sampled_from([0, 5]), st.sampled_from([-1, V + 1, 1.5])),
    seed=_mostly(st.integers(0, 2**31 - 1), st.sampled_from([-7, 2**40, 1.0])))
def test_generate_gives_tokens_or_a_clear_error(tiny_brain, prompt, max_length, temperature,
                                                top_k, seed):
  params, state, config = tiny_brain
  try:
    out = generate_lib.generate(params, state, config, prompt, max_length=max_length,
                                temperature=temperature, top_k=top_k, seed=seed)
  except (ValueError, TypeError) as e:
    _clear_error(e)
    hypothesis.event(f"rejected: {type(e).__name__}")
    return
  hypothesis.event("generated")
  assert isinstance(out, list) and len(out) == max_length
  assert all(isinstance(t, int) and 0 <= t < V for t in out)
  # What was accepted really was valid.
  ids = np.asarray(prompt)
  assert ids.ndim == 1 and ids.size >= 1 and np.issubdtype(ids.dtype, np.integer)
  assert ids.min() >= 0 and ids.max() < V
  assert math.isfinite(temperature) and temperature >= 0 and 0 <= top_k <= V


# ----------------------------------------------------------------------- BrainConfig

_REALS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.integers(-3, 3), st.sampled_from([None, "1", True]))


@SETTINGS
@hypothesis.given(fields=st.fixed_dictionaries({}, optional={
    "scale": st.one_of(_REALS, st.sampled_from([1 / 32, 1 / 64, 0.01])),
    "tile": st.one_of(st.integers(-16, 64), st.sampled_from([16.0, "16", None])),
    "fan_in_tiles": st.one_of(st.integers(-2, 24), st.sampled_from([8.0, None])),
    "embedding_dim": st.one_of(st.integers(-2, 128), st.sampled_from([64.5, None])),
    "vocab_size": st.one_of(st.integers(-2, 1000), st.sampled_from([257.0, "257"])),
    "dt_ms": _REALS,
    "tau_mem_ms": _REALS,
    "neuron_model": st.sampled_from(["alif", "izhikevich", "lif", "", 3]),
    "implementation": st.sampled_from(["xla", "pallas", "cuda"]),
    "readout_area": st.sampled_from(["broca", "pfc", "cortex", ""]),
    "input_areas": st.sampled_from([("thalamus",), ("wernicke",), (), ("thalamus", "x")]),
}))
def test_brain_config_is_consistent_or_a_clear_error(fields):
  base = dict(scale=1 / 32, tile=16, fan_in_tiles=8, embedding_dim=64, vocab_size=V)
  base.update(fields)
  try:
    config = BrainConfig(**base)
    slots = connectivity.allocate_slots(config)
  except (ValueError, TypeError) as e:
    _clear_error(e)
    return
  assert config.scale > 0 and config.tile % 8 == 0 and config.vocab_size >= 1
  assert all(s >= config.tile and s % config.tile == 0 for s in config.area_sizes)
  assert config.num_neurons == sum(config.area_sizes) == config.num_blocks * config.tile
  assert all(sum(n for _, n in per_area) == config.fan_in_tiles for per_area in slots.values())


# ------------------------------------------------------------------------ tokenizers


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  texts = ["The quick brown fox jumps over the lazy dog. " * 40,
           "Pack my box with five dozen liquor jugs; café, naïve, 東京. " * 40]
  bpe = tokenizer_lib.train_tokenizer(texts, vocab_size=300, num_threads=1,
                                      model_prefix_path=tmp_path_factory.mktemp("sp") / "sp")
  return [tokenizer_lib.ByteTokenizer(), bpe]


_ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)


@SETTINGS
@hypothesis.given(text=st.one_of(_ANY_TEXT, st.binary(max_size=10), st.sampled_from([None, 3])))
def test_tokenizers_round_trip_text_or_say_why_not(tokenizers, text):
  for tokenizer in tokenizers:
    try:
      ids = tokenizer.encode(text)
    except (ValueError, TypeError) as e:
      _clear_error(e)
      assert not isinstance(text, str) or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
      continue
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@SETTINGS
@hypothesis.given(ids=st.lists(st.one_of(st.integers(-2, 400), st.floats(0, 10, width=16),
                                         st.sampled_from([None, "a"])), max_size=12))
def test_tokenizers_decode_ids_or_say_why_not(tokenizers, ids):
  for tokenizer in tokenizers:
    try:
      text = tokenizer.decode(ids)
    except (ValueError, TypeError) as e:
      _clear_error(e)
      continue
    assert isinstance(text, str)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)


# ------------------------------------------------------------------------ data files

_CHUNKS = st.sampled_from([b"", b"\x00", b"\x00\x00text\x00", b"\xff\xfe\xc3", b"\xed\xa0\x80",
                           "caf\u00e9 \u6771\u4eac".encode(), b"\n", b"\r\n", b"plain words ",
                           b'{"text": "a\\u0000b"}\n', b'{"text": "\\ud800"}\n'])


@st.composite
def file_bytes(draw):
  kind = draw(st.sampled_from(["empty", "mixed", "random", "huge"]))
  if kind == "empty":
    return b""
  if kind == "random":
    return draw(st.binary(max_size=400))
  if kind == "huge":  # one line of up to ~2 MB, no newline
    unit = draw(st.sampled_from([b"word ", b"\xff", b"\x00", "\u00e9".encode()]))
    return unit * draw(st.integers(100_000, 2_000_000 // len(unit)))
  return b"".join(draw(st.lists(_CHUNKS, max_size=20)))


@SETTINGS
@hypothesis.given(payload=file_bytes(), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_data_files_pack_into_valid_batches_or_a_named_error(tmp_path_factory, payload, suffix):
  directory = tmp_path_factory.mktemp("fuzzdata")
  path = directory / f"fuzz{suffix}"
  path.write_bytes(payload)
  good = directory / "good.txt"
  good.write_text("A clean document to keep the streams fed. " * 4)
  docs = data.FileDocuments([path, good])
  packed = iter(data.PackedBatches(docs, tokenizer_lib.ByteTokenizer(), batch_size=2,
                                   seq_len=8, segment_tokens=64))
  try:
    batches = list(packed)
  except data.DataSourceError as e:
    assert str(path) in str(e)  # names the file (and the line for JSON lines)
    return
  assert batches, "the good document alone fills at least one batch"
  for b in batches:
    assert b.inputs_BxL.shape == b.targets_BxL.shape == (2, 8)
    assert b.inputs_BxL.dtype == np.int32 and 0 <= b.inputs_BxL.min() and b.inputs_BxL.max() < V
  stats = packed.stats
  assert stats.documents >= 1  # the good document; an empty .txt is one skipped document
  assert stats.empty_skipped >= (suffix == ".txt" and not payload.strip())
  if suffix == ".txt":
    try:
      payload.decode("utf-8")
      assert stats.replacement_chars == 0
    except UnicodeDecodeError:
      assert stats.replacement_chars >= 1
  json.dumps(packed.get_state())  # the state of any stream resumes
