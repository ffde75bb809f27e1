"""Tokenizers: a sentencepiece BPE trained on a text sample, and a byte tokenizer for tests.

Both expose the same interface: `encode(str) -> list[int]`, `decode(list[int]) -> str`,
`vocab_size`, `eos_id` and `save(directory) -> Path`; `load_tokenizer(path)` reads back
either kind. Every string round-trips exactly (`decode(encode(s)) == s`): the BPE has
`byte_fallback=True` and no normalisation, so characters outside its vocabulary become
UTF-8 byte pieces instead of `<unk>`.

Ids of the BPE: 0 = `<unk>` (unused thanks to byte fallback), 1 = eos (document
separator), then 256 byte pieces `<0x00>`..`<0xFF>`, then characters and merges. There
is no bos or pad: a document's start is the eos that ends the one before it.
"""

from __future__ import annotations

import io
import json
import operator
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

MODEL_FILENAME = "tokenizer.model"
BYTE_TOKENIZER_FILENAME = "byte_tokenizer.json"

_UNK_ID = 0
_EOS_ID = 1
# Sentencepiece skips training sentences longer than `max_sentence_length` bytes; the
# sample is cut into pieces of about this many characters at line ends, so newlines stay
# inside pieces and become tokens ("\n", ".\n", "\n\n").
_SENTENCE_CHARS = 2048
_MAX_SENTENCE_BYTES = 4 * _SENTENCE_CHARS  # UTF-8 takes at most 4 bytes per character


class Tokenizer:
  """A sentencepiece model (BPE with byte fallback); see `train_tokenizer`."""

  def __init__(self, model_proto: bytes):
    self._model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  def __reduce__(self):  # picklable for grain's worker processes
    return (Tokenizer, (self._model_proto,))

  @classmethod
  def load(cls, path: str | Path) -> Tokenizer:
    """Reads a `.model` file, or `tokenizer.model` inside a directory."""
    path = Path(path)
    if path.is_dir():
      path = path / MODEL_FILENAME
    if not path.is_file():
      raise FileNotFoundError(f"No sentencepiece model at {path}; train one with "
                              "neurogen_jax.tokenizer.train_tokenizer or pass its .model path.")
    return cls(path.read_bytes())

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(_check_text(text))

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(_check_ids(ids, self.vocab_size))

  def save(self, directory: str | Path) -> Path:
    """Writes the model as `directory/tokenizer.model` (the .model file's bytes); returns it."""
    path = Path(directory) / MODEL_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(self._model_proto)
    return path


class ByteTokenizer:
  """UTF-8 bytes as tokens: ids 0..255 are bytes, 256 is eos; nothing to train."""

  vocab_size = 257
  eos_id = 256

  def encode(self, text: str) -> list[int]:
    return list(_check_text(text).encode("utf-8"))

  def decode(self, ids: Iterable[int]) -> str:
    """Drops eos; a byte sequence cut inside a character decodes to U+FFFD."""
    ids = _check_ids(ids, self.vocab_size)
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

  def save(self, directory: str | Path) -> Path:
    """Writes `directory/byte_tokenizer.json` (a marker `load_tokenizer` recognises)."""
    path = Path(directory) / BYTE_TOKENIZER_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "bytes", "vocab_size": self.vocab_size,
                                "eos_id": self.eos_id}))
    return path

  @classmethod
  def load(cls, path: str | Path) -> ByteTokenizer:
    del path  # nothing is stored but the marker
    return cls()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str) -> str:
  """`text` if a tokenizer can encode it; TypeError/ValueError saying why not."""
  if not isinstance(text, str):
    hint = " (decode the bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
    raise TypeError(f"encode wants a str, got {type(text).__name__}{hint}.")
  match = _SURROGATE.search(text)
  if match is not None:
    raise ValueError(f"encode got a lone surrogate U+{ord(match.group()):04X} at position "
                     f"{match.start()}, which UTF-8 cannot encode; replace it (e.g. "
                     "text.encode('utf-8', 'replace').decode()).")
  return text


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
  """`ids` as Python ints, each in [0, vocab_size); TypeError/ValueError naming a bad one."""
  out = []
  for i in ids:
    try:
      i = operator.index(i)
    except TypeError:
      raise TypeError(f"decode wants integer token ids, got {i!r} ({type(i).__name__})."
                      ) from None
    if not 0 <= i < vocab_size:
      raise ValueError(f"decode got token id {i}, outside [0, {vocab_size}) of this tokenizer's "
                       "vocabulary.")
    out.append(i)
  return out


def load_tokenizer(path: str | Path) -> Tokenizer | ByteTokenizer:
  """Loads what `save` wrote: a directory holding either file, or the file itself."""
  path = Path(path)
  if path.name == BYTE_TOKENIZER_FILENAME or (path / BYTE_TOKENIZER_FILENAME).is_file():
    return ByteTokenizer()
  return Tokenizer.load(path)


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix_path: str | Path,
                    sample_chars: int = 20_000_000, num_threads: int = 4) -> Tokenizer:
  """Trains a BPE sentencepiece model on (a prefix of) `texts`; writes `PREFIX.model`.

  Args:
    texts: documents; only the first `sample_chars` characters are used (the last
      document is cut), so an endless stream is fine.
    vocab_size: exact size of the vocabulary, including `<unk>`, eos and 256 byte pieces.
    model_prefix_path: the model is written to `model_prefix_path + ".model"`.
    sample_chars: cap on the training sample (sentencepiece holds it all in memory,
      ~10 bytes per character while training).
    num_threads: sentencepiece trainer threads.

  Returns:
    The trained tokenizer.

  Raises:
    ValueError: `vocab_size` does not fit the sample. The vocabulary is exact rather than
      silently smaller (`hard_vocab_limit=False`), because the readout's width is
      derived from it; the message gives the range this sample supports.
  """
  model_path = Path(f"{model_prefix_path}.model")
  model_path.parent.mkdir(parents=True, exist_ok=True)
  sentences = list(_sample_sentences(texts, sample_chars))
  if not sentences:
    raise ValueError("train_tokenizer got no text: `texts` is empty or holds only empty strings.")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        max_sentence_length=_MAX_SENTENCE_BYTES, input_sentence_size=0,
        unk_id=_UNK_ID, eos_id=_EOS_ID, bos_id=-1, pad_id=-1,
        num_threads=num_threads, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(_explain_training_error(str(e), vocab_size, sample_chars)) from e
  model_path.write_bytes(model.getvalue())
  return Tokenizer(model.getvalue())


def _sample_sentences(texts: Iterable[str], sample_chars: int) -> Iterator[str]:
  """Cuts the first `sample_chars` characters of `texts` into pieces of ~_SENTENCE_CHARS."""
  budget = sample_chars
  for text in texts:
    if budget <= 0:
      return
    text = text[:budget]
    budget -= len(text)
    start = 0
    while start < len(text):
      end = min(start + _SENTENCE_CHARS, len(text))
      if end < len(text):
        line_end = text.rfind("\n", start, end)
        end = line_end + 1 if line_end > start else end  # no newline: a hard cut
      yield text[start:end]
      start = end


def _explain_training_error(message: str, vocab_size: int, sample_chars: int) -> str:
  too_high = re.search(r"Vocabulary size too high.*<= (\d+)", message)
  if too_high:
    return (f"vocab_size={vocab_size} is too large for the tokenizer's training sample: it "
            f"supports at most {too_high.group(1)} pieces. Lower vocab_size, or give more text "
            f"(raise sample_chars={sample_chars} if the corpus has more).")
  too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
  if too_low:
    return (f"vocab_size={vocab_size} is too small: this sample needs at least "
            f"{too_low.group(2)} pieces (eos, <unk>, 256 bytes and every distinct "
            "character). Raise vocab_size, or use ByteTokenizer (257 ids).")
  return f"sentencepiece training failed: {message}"
