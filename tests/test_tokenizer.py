"""Sentencepiece BPE and byte tokenizers: exact round trips, exact vocabulary, save/load."""

import itertools
import pickle
import random

import hypothesis
import hypothesis.strategies as st
import pytest

from neurogen_jax import tokenizer as tok

WORDS = ("the king queen shall hath thou thee love night day sweet lord good my "
         "what speak come heart death blood fair").split()


def synthetic_corpus(num_docs=60, seed=0):
  """Pseudo-verse: lines of common words, capitalised, with punctuation and blank lines."""
  rng = random.Random(seed)
  docs = []
  for _ in range(num_docs):
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize()
             + rng.choice([",", ".", ";", "!", "?"]) for _ in range(rng.randint(5, 30))]
    docs.append("\n".join(lines) + "\n\n")
  return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("tok") / "sp400"
  return tok.train_tokenizer(synthetic_corpus(), vocab_size=400, model_prefix_path=prefix,
                             num_threads=1), prefix


def test_vocab_size_and_special_ids_are_exact(trained):
  tokenizer, _ = trained
  assert tokenizer.vocab_size == 400
  assert tokenizer.eos_id == 1
  ids = [i for doc in synthetic_corpus(seed=1) for i in tokenizer.encode(doc)]
  assert 0 not in ids and tokenizer.eos_id not in ids  # no <unk>, eos only from packing
  assert max(ids) < 400


def test_bpe_compresses_its_kind_of_text(trained):
  tokenizer, _ = trained
  text = "".join(synthetic_corpus(seed=2))
  assert len(tokenizer.encode(text)) < 0.3 * len(text.encode())


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(text=st.text(max_size=200))
def test_any_unicode_text_round_trips(trained, text):
  tokenizer, _ = trained
  for t in (tokenizer, tok.ByteTokenizer()):
    ids = t.encode(text)
    assert all(0 <= i < t.vocab_size for i in ids)
    assert t.decode(ids) == text


def test_save_and_load_give_the_same_tokenizer(trained, tmp_path):
  tokenizer, prefix = trained
  path = tokenizer.save(tmp_path / "ckpt")
  assert path == tmp_path / "ckpt" / tok.MODEL_FILENAME
  assert path.read_bytes() == prefix.with_suffix(".model").read_bytes()
  text = "".join(synthetic_corpus(num_docs=3, seed=3)) + " 🎉 ünïcödé"
  for loaded in (tok.Tokenizer.load(path), tok.Tokenizer.load(tmp_path / "ckpt"),
                 tok.load_tokenizer(tmp_path / "ckpt"), pickle.loads(pickle.dumps(tokenizer))):
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.eos_id == tokenizer.eos_id
    assert loaded.encode(text) == tokenizer.encode(text)


def test_byte_tokenizer_save_and_load(tmp_path):
  byte_tokenizer = tok.ByteTokenizer()
  path = byte_tokenizer.save(tmp_path)
  loaded = tok.load_tokenizer(tmp_path)
  assert isinstance(loaded, tok.ByteTokenizer) and tok.load_tokenizer(path).vocab_size == 257
  assert loaded.encode("é") == [0xC3, 0xA9] and loaded.eos_id == 256
  assert loaded.decode([104, 105, 256]) == "hi"


def test_missing_model_says_how_to_get_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_tokenizer"):
    tok.load_tokenizer(tmp_path)


def test_sample_is_capped_so_an_endless_stream_works(tmp_path):
  endless = itertools.cycle(synthetic_corpus(num_docs=5))
  tokenizer = tok.train_tokenizer(endless, vocab_size=350, model_prefix_path=tmp_path / "m",
                                  sample_chars=20_000, num_threads=1)
  assert tokenizer.vocab_size == 350


def test_too_large_vocab_names_the_maximum(tmp_path):
  with pytest.raises(ValueError, match=r"supports at most (\d+) pieces") as error:
    tok.train_tokenizer(["hello world\n"] * 3, vocab_size=5000, model_prefix_path=tmp_path / "m")
  maximum = int(error.value.__str__().split("at most ")[1].split()[0])
  assert tok.train_tokenizer(["hello world\n"] * 3, vocab_size=maximum,
                             model_prefix_path=tmp_path / "m").vocab_size == maximum


def test_too_small_vocab_names_the_minimum(tmp_path):
  with pytest.raises(ValueError, match=r"needs at least \d+ pieces.*ByteTokenizer"):
    tok.train_tokenizer(["hello world\n"], vocab_size=100, model_prefix_path=tmp_path / "m")


def test_no_text_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no text"):
    tok.train_tokenizer(["", ""], vocab_size=300, model_prefix_path=tmp_path / "m")
