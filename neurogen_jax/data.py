"""Documents in, packed token batches out: grain pipelines that resume exactly.

Document sources, each a `grain.IterDataset[str]` whose iterator has `get_state()` /
`set_state()` (JSON-serialisable) and a `stats` (`ReadStats`):
  * `FileDocuments(files)`: local `.txt` (one document per file), `.jsonl` (field
    `text`), `.jsonl.zst` (zstd-compressed jsonl, the SlimPajama chunk format) and
    `.parquet` (column `text`); `resolve_files` expands globs, comma lists, directories.
  * `hf_documents(name)`: a Hugging Face dataset streamed with `datasets`.
  * `TextDocuments(texts)`: an in-memory iterable of strings.
`make_documents(data_cfg)` picks one from a config.

Packing: `PackedBatches(documents, tokenizer, batch_size=B, seq_len=L)` is a grain
dataset of `Batch(inputs_BxL, targets_BxL)`. Each of the B rows is a persistent text
stream (the brain keeps per-stream state across batches): row b of batch t+1 continues
row b of batch t, and `targets_BxL[b, i]` is the token after `inputs_BxL[b, i]` in
stream b. Documents are dealt round-robin to the streams that need tokens, each
followed by eos.

Several hosts: `shard_documents(documents, i, S)` is the i-th of S disjoint shards of the
stream (by file when it can, else every S-th document), and `PackedShards` packs the
shards a process reads side by side, each into its own B/S streams, with one state per
shard (saved per shard in checkpoints, so a resume is exact on any number of processes
that reads the same S shards).

Bad input never crashes with an arbitrary exception: it is skipped (empty documents),
repaired and counted (undecodable bytes become U+FFFD, `ReadStats.replacement_chars`),
or raised as `DataSourceError` naming the file and what to do.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import io
import itertools
import json
import logging
import os
import re
import socket
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from neurogen_jax import corpus
from neurogen_jax.corpus import DataSourceError

__all__ = [
    "Batch", "ContiguousBatches", "DataSourceError", "FileDocuments", "HFDocuments",
    "PackedBatches", "PackedShards",
    "ReadStats", "SUPPORTED_SUFFIXES", "ShardedDocuments", "TextDocuments", "as_documents",
    "contiguous_streams", "hf_documents", "join_documents", "make_documents", "resolve_files",
    "shard_documents",
]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".parquet")
LOCAL_FILES_HINT = "--config.data.files='path/*.jsonl.zst'"
_HF_FALLBACKS = {"cerebras/SlimPajama-627B": "DKYoon/SlimPajama-6B"}
_HUB_CONNECT_TIMEOUT_S = 3.0
_PARQUET_BATCH_ROWS = 1024
_REPLACEMENT_CHAR_UTF8 = "\ufffd".encode()
_SURROGATE = re.compile("[\ud800-\udfff]")

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class ReadStats:
  """Counters of a document iterator (they are part of its state, so they survive resume).

  documents: documents yielded.
  empty_skipped: records that were empty or whitespace only, skipped.
  replacement_chars: U+FFFD characters put in for bytes that were not valid UTF-8.
  """

  documents: int = 0
  empty_skipped: int = 0
  replacement_chars: int = 0


# ---------------------------------------------------------------------------- local files


def resolve_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
  """Expands a file spec into a list of readable files.

  Args:
    spec: a path, a glob (`data/*.jsonl.zst`, `**` recursive), a comma-separated list of
      those, or a sequence of them. A directory stands for all files with a supported
      suffix below it (recursively).

  Returns:
    Files in spec order, each glob and directory sorted, duplicates removed.

  Raises:
    DataSourceError: nothing matched, a path does not exist, or a suffix is unsupported.
  """
  if isinstance(spec, (str, os.PathLike)):
    text = os.fspath(spec)
    items = [text] if os.path.exists(text) else text.split(",")
  else:
    items = [os.fspath(item) for item in spec]
  files: dict[Path, None] = {}
  for item in (item.strip() for item in items):
    if not item:
      continue
    pattern = os.path.expanduser(item)
    matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    if not matches or not os.path.exists(matches[0]):
      raise DataSourceError(f"No file matches {item!r} (data files must be {_suffix_list()}).")
    for match in map(Path, matches):
      if match.is_dir():
        files.update((f, None) for f in sorted(match.rglob("*"))
                     if f.is_file() and _suffix_of(f) in SUPPORTED_SUFFIXES)
      elif _suffix_of(match) in SUPPORTED_SUFFIXES:
        files[match] = None
      elif not glob.has_magic(pattern):
        raise DataSourceError(f"{match}: unsupported file type; data files must be "
                              f"{_suffix_list()}.")
  if not files:
    raise DataSourceError(f"{spec!r} holds no data files ({_suffix_list()}).")
  return list(files)


class FileDocuments(grain.IterDataset):
  """Documents of local files, file after file, `num_epochs` passes (None = forever).

  Memory: a `.txt` document is its whole file; other formats hold one record (a line, a
  parquet batch) at a time, so a file with one huge line peaks at ~3x that line (bytes,
  text and parsed text briefly overlap), whatever the file's other content.
  """

  def __init__(self, files: Sequence[str | os.PathLike], num_epochs: int | None = 1):
    if not files:
      raise DataSourceError("FileDocuments got no files; see resolve_files.")
    self.files = tuple(os.fspath(f) for f in files)
    self.num_epochs = num_epochs
    super().__init__(grain.MapDataset.source(list(self.files)).repeat(num_epochs))

  def __iter__(self) -> _FileDocumentsIterator:
    return _FileDocumentsIterator(self._parent)

  def __str__(self) -> str:
    return f"FileDocuments({self._parent})"


class _FileDocumentsIterator(grain.DatasetIterator):
  """State: which file (epochs unrolled) and how many of its records were consumed."""

  def __init__(self, files: grain.MapDataset):
    super().__init__()
    self._files = files
    self.stats = ReadStats()
    self._file_position = 0
    self._records_in_file = 0
    self._path: Path | None = None  # the file `_open_records` reads
    self._open_records: Iterator[tuple[str, int]] | None = None

  def __next__(self) -> str:
    self._assert_not_closed()
    while self._file_position < len(self._files):
      if self._open_records is None:
        self._path = Path(self._files[self._file_position])
        self._open_records = _records(self._path, skip=self._records_in_file)
      try:
        record = next(self._open_records, None)
      except (OSError, EOFError, zstandard.ZstdError, pa.ArrowException) as e:
        self._close_records()
        path = self._path
        raise DataSourceError(f"{path}: cannot read it as {_suffix_of(path)} "
                              f"({type(e).__name__}: {e}). Fix or remove the file.") from e
      if record is None:
        self._open_records = None
        self._file_position += 1
        self._records_in_file = 0
        continue
      self._records_in_file += 1
      text, replaced = record
      self.stats.replacement_chars += replaced
      if not _is_blank(text):
        self.stats.documents += 1
        return text
      self.stats.empty_skipped += 1
    raise StopIteration

  def get_state(self) -> dict[str, Any]:
    return {"file_position": self._file_position, "records_in_file": self._records_in_file,
            "stats": dataclasses.asdict(self.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._close_records()
    self._file_position = int(state["file_position"])
    self._records_in_file = int(state["records_in_file"])
    self.stats = ReadStats(**state["stats"])

  def close(self) -> None:
    self._close_records()
    super().close()

  def _close_records(self) -> None:
    if self._open_records is not None:
      self._open_records.close()  # closes the file it holds open
      self._open_records = None


def _records(path: Path, skip: int) -> Iterator[tuple[str, int]]:
  """Yields (text, replacement_chars) per record of `path`, after skipping `skip` records.

  A record is the whole file (.txt), a line (.jsonl, .jsonl.zst) or a row (.parquet);
  skipped records are not decoded. Malformed records raise DataSourceError; I/O and
  codec errors are raised as they come (the caller names the file).
  """
  readers = {".txt": _txt_records, ".jsonl": _jsonl_records, ".jsonl.zst": _jsonl_zst_records,
             ".parquet": _parquet_records}
  reader = readers.get(_suffix_of(path))
  if reader is None:
    raise DataSourceError(f"{path}: unsupported file type; data files must be {_suffix_list()}.")
  return reader(path, skip)


def _txt_records(path: Path, skip: int) -> Iterator[tuple[str, int]]:
  if skip == 0:
    yield _decode(path.read_bytes())


def _jsonl_records(path: Path, skip: int) -> Iterator[tuple[str, int]]:
  with open(path, "rb") as f:
    yield from _json_lines(f, path, skip)


def _jsonl_zst_records(path: Path, skip: int) -> Iterator[tuple[str, int]]:
  with open(path, "rb") as f:
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    yield from _json_lines(io.BufferedReader(reader), path, skip)


def _json_lines(lines: Iterable[bytes], path: Path, skip: int) -> Iterator[tuple[str, int]]:
  for line_number, line in enumerate(itertools.islice(lines, skip, None), start=skip + 1):
    # The `del`s keep a huge line in memory at most twice (as text and as parsed text).
    line_text, replaced = _decode(line)
    del line
    if _is_blank(line_text):
      yield "", replaced
      continue
    try:
      record = json.loads(line_text)
      del line_text
    except (ValueError, RecursionError) as e:
      raise DataSourceError(f"{path}:{line_number}: not a JSON line ({str(e)[:200]}). Each "
                            'line must be an object like {"text": "..."}.') from e
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
      raise DataSourceError(f"{path}:{line_number}: no string field 'text' in this JSON line; "
                            'each line must be an object like {"text": "..."}.')
    text, unpaired = _replace_surrogates(text)  # JSON escapes can encode lone surrogates
    yield text, replaced + unpaired


def _parquet_records(path: Path, skip: int) -> Iterator[tuple[str, int]]:
  with pq.ParquetFile(path) as table:
    schema = table.schema_arrow
    if "text" not in schema.names:
      raise DataSourceError(f"{path}: no column 'text' (columns: {schema.names}).")
    column_type = schema.field("text").type
    is_binary = pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)
    if not (is_binary or pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
      raise DataSourceError(f"{path}: column 'text' holds {column_type}, expected strings.")
    for batch in table.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=["text"]):
      if skip >= batch.num_rows:
        skip -= batch.num_rows
        continue
      column = batch.column(0).slice(skip)
      # Strings are read as their bytes: a damaged file can hold invalid UTF-8 in a string
      # column, which pyarrow would raise on; `_decode` replaces and counts it instead.
      raw_type = pa.large_binary() if pa.types.is_large_string(column_type) else pa.binary()
      for value in (column if is_binary else column.cast(raw_type)).to_pylist():
        yield ("", 0) if value is None else _decode(value)
      skip = 0


def _decode(raw: bytes) -> tuple[str, int]:
  """UTF-8 text of `raw` and how many U+FFFD were put in for invalid bytes."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    text = raw.decode("utf-8", errors="replace")
    # A valid U+FFFD in the input is always the 3 bytes EF BF BD, never part of an
    # invalid sequence (EF is a lead byte), so the difference counts only replacements.
    return text, text.count("\ufffd") - raw.count(_REPLACEMENT_CHAR_UTF8)


def _replace_surrogates(text: str) -> tuple[str, int]:
  """Lone surrogates (not encodable as UTF-8) replaced by U+FFFD, and how many there were."""
  if _SURROGATE.search(text) is None:
    return text, 0
  return _decode(text.encode("utf-8", errors="surrogatepass"))


def _is_blank(text: str) -> bool:
  return not text or text.isspace()  # unlike strip(), copies nothing


def _suffix_of(path: Path) -> str:
  return ".jsonl.zst" if path.name.endswith(".jsonl.zst") else path.suffix


def _suffix_list() -> str:
  return "/".join(SUPPORTED_SUFFIXES) + " files or directories of them"


# ---------------------------------------------------------------------- in-memory texts


class TextDocuments(grain.IterDataset):
  """Documents from an in-memory iterable of strings (e.g. `Trainer(cfg, dataset=texts)`).

  State: the number of strings consumed. Resume is exact when `texts` is a sequence or
  can be iterated again from the start; a one-shot iterator (a generator) is resumed by
  skipping that many items from wherever it stands.
  """

  def __init__(self, texts: Iterable[str]):
    if isinstance(texts, (str, bytes)):
      raise TypeError("TextDocuments wants an iterable of documents, got one string; wrap it "
                      "in a list, or pass file paths to resolve_files/FileDocuments.")
    super().__init__()
    self._texts = texts

  def __iter__(self) -> _TextDocumentsIterator:
    return _TextDocumentsIterator(self._texts)

  def __str__(self) -> str:
    return f"TextDocuments({type(self._texts).__name__})"


class _TextDocumentsIterator(grain.DatasetIterator):

  def __init__(self, texts: Iterable[str]):
    super().__init__()
    self._texts = texts
    self._consumed = 0
    self.stats = ReadStats()
    self._iterator = iter(texts)

  def __next__(self) -> str:
    self._assert_not_closed()
    for text in self._iterator:
      self._consumed += 1
      if not isinstance(text, str):
        raise DataSourceError(f"document {self._consumed - 1} is a {type(text).__name__}, "
                              "expected str.")
      text, replaced = _replace_surrogates(text)
      self.stats.replacement_chars += replaced
      if not _is_blank(text):
        self.stats.documents += 1
        return text
      self.stats.empty_skipped += 1
    raise StopIteration

  def get_state(self) -> dict[str, Any]:
    return {"documents_consumed": self._consumed, "stats": dataclasses.asdict(self.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._consumed = int(state["documents_consumed"])
    self.stats = ReadStats(**state["stats"])
    if isinstance(self._texts, Sequence):
      self._iterator = iter(self._texts[self._consumed:])
    else:
      self._iterator = itertools.islice(iter(self._texts), self._consumed, None)


def as_documents(source: grain.IterDataset | Iterable[str]) -> grain.IterDataset:
  """A grain document dataset as is; an iterable of strings wrapped in `TextDocuments`."""
  return source if isinstance(source, grain.IterDataset) else TextDocuments(source)


# ------------------------------------------------------------------------- Hugging Face


def hf_documents(name: str, split: str = "train", config: str | None = None) -> HFDocuments:
  """Streams the `text` field of Hugging Face dataset `name` (nothing is downloaded whole).

  `cerebras/SlimPajama-627B` falls back to `DKYoon/SlimPajama-6B` when it cannot be
  opened while the hub is reachable.

  Raises:
    DataSourceError: within ~3 s when offline (`HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE` set,
      or huggingface.co unreachable), or when the dataset cannot be opened; the message
      names the local-file alternative.
  """
  _check_hub_reachable(name)
  import datasets  # pylint: disable=g-import-not-at-top  # slow import, only needed here

  candidates = [name] + ([_HF_FALLBACKS[name]] if name in _HF_FALLBACKS else [])
  failures = []
  for candidate in candidates:
    try:
      dataset = datasets.load_dataset(candidate, config, split=split, streaming=True)
    except Exception as e:  # pylint: disable=broad-except  # datasets raises many types
      failures.append(f"{candidate}: {type(e).__name__}: {str(e)[:300]}")
      _log.warning("Cannot open Hugging Face dataset %s (%s)", candidate, failures[-1])
      continue
    if candidate != name:
      _log.warning("Using %s instead of %s.", candidate, name)
    return HFDocuments(dataset)
  raise DataSourceError(f"Cannot stream Hugging Face dataset {name!r} (split {split!r}): "
                        f"{'; '.join(failures)}. Train on local files instead: "
                        f"{LOCAL_FILES_HINT}.")


class HFDocuments(grain.IterDataset):
  """Documents (field `text`) of a `datasets.IterableDataset`.

  State: the dataset's own `state_dict()` (shard and example index), so resume does not
  re-read what was consumed. The state tracks the dataset's latest iteration: use one
  iterator at a time.
  """

  def __init__(self, dataset: Any):
    super().__init__()
    self._dataset = dataset

  @property
  def dataset(self) -> Any:
    """The `datasets.IterableDataset` read."""
    return self._dataset

  def __iter__(self) -> _HFDocumentsIterator:
    return _HFDocumentsIterator(self._dataset)

  def __str__(self) -> str:
    return "HFDocuments()"


class _HFDocumentsIterator(grain.DatasetIterator):

  def __init__(self, dataset: Any):
    super().__init__()
    self._dataset = dataset
    self.stats = ReadStats()
    self._examples = iter(dataset)

  def __next__(self) -> str:
    self._assert_not_closed()
    for example in self._examples:
      if "text" not in example:
        raise DataSourceError(f"This Hugging Face dataset has no 'text' field (fields: "
                              f"{sorted(example)}); use one with a 'text' field.")
      text, replaced = _replace_surrogates(example["text"] or "")
      self.stats.replacement_chars += replaced
      if not _is_blank(text):
        self.stats.documents += 1
        return text
      self.stats.empty_skipped += 1
    raise StopIteration

  def get_state(self) -> dict[str, Any]:
    # The JSON round trip copies the state and proves it serialisable.
    return {"hf_state": json.loads(json.dumps(self._dataset.state_dict())),
            "stats": dataclasses.asdict(self.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._dataset.load_state_dict(state["hf_state"])
    self._examples = iter(self._dataset)
    self.stats = ReadStats(**state["stats"])


def _check_hub_reachable(name: str) -> None:
  """Fails fast (env vars, then one TCP connect) where `datasets` would hang ~25 s."""
  advice = (f"Train on local files instead, e.g. {LOCAL_FILES_HINT} (SlimPajama chunks), "
            "or on the default corpus with --config.data.dataset_name=shakespeare.")
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
      raise DataSourceError(f"Hugging Face dataset {name!r} needs the hub, but {var}="
                            f"{os.environ[var]} (offline). {advice}")
  endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
  address = urllib.parse.urlsplit(proxy if proxy else endpoint.geturl())
  host, port = address.hostname, address.port or (443 if address.scheme == "https" else 80)
  try:
    socket.create_connection((host, port), timeout=_HUB_CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise DataSourceError(f"Hugging Face dataset {name!r} needs the hub, but {host}:{port} is "
                          f"unreachable ({e}). {advice}") from e


# ------------------------------------------------------------------------------ config


class DataConfigLike(Protocol):
  files: str | Sequence[str]
  dataset_name: str
  split: str


def make_documents(data_cfg: DataConfigLike, num_epochs: int | None = 1) -> grain.IterDataset:
  """The document dataset a config asks for.

  Args:
    data_cfg: an ml_collections ConfigDict or any object with `files` (glob, comma list
      or list; empty means use `dataset_name`), `dataset_name` ('shakespeare', the
      default corpus, or a Hugging Face name) and `split` ('train'; for shakespeare also
      'heldout').
    num_epochs: passes over local files or the default corpus (None = forever); a
      Hugging Face stream is read once.
  """
  if data_cfg.files:
    return FileDocuments(resolve_files(data_cfg.files), num_epochs)
  if data_cfg.dataset_name == "shakespeare":
    train, heldout = corpus.shakespeare_split()
    splits = {"train": train, "heldout": heldout}
    if data_cfg.split not in splits:
      raise DataSourceError(f"The shakespeare corpus has splits {list(splits)}, not "
                            f"{data_cfg.split!r}.")
    return FileDocuments(splits[data_cfg.split], num_epochs)
  return hf_documents(data_cfg.dataset_name, data_cfg.split)


# ---------------------------------------------------------------------------- sharding


def shard_documents(documents: grain.IterDataset | Iterable[str], index: int,
                    count: int) -> grain.IterDataset:
  """Shard `index` of `count` of a document stream: what one of `count` hosts reads.

  The shards are disjoint and together hold every document. Local files
  (`FileDocuments`) whose number divides by `count` are shared out by file (shard i reads
  files i, i + count, ...: no host opens another's files); otherwise, and for in-memory
  texts, shard i keeps documents i, i + count, ... of the whole stream (every host reads
  all of it). A Hugging Face stream is split by `datasets.distributed.split_dataset_by_node`
  (by its files when their number divides by `count`, else by example).
  """
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} is not in [0, {count})")
  documents = as_documents(documents)
  if count == 1:
    return documents
  if isinstance(documents, FileDocuments) and len(documents.files) % count == 0:
    return FileDocuments(documents.files[index::count], documents.num_epochs)
  if isinstance(documents, HFDocuments):
    from datasets.distributed import split_dataset_by_node  # pylint: disable=g-import-not-at-top
    return HFDocuments(split_dataset_by_node(documents.dataset, rank=index, world_size=count))
  return ShardedDocuments(documents, index, count)


class ShardedDocuments(grain.IterDataset):
  """Documents index, index + count, index + 2 * count, ... of `documents`.

  State: the parent's state and how many documents to skip before the next one. `stats`
  are the parent's (they count every document read, the other shards' too).
  """

  def __init__(self, documents: grain.IterDataset, index: int, count: int):
    if not 0 <= index < count:
      raise ValueError(f"shard index {index} is not in [0, {count})")
    super().__init__(documents)
    self._index, self._count = index, count

  def __iter__(self) -> _ShardedDocumentsIterator:
    return _ShardedDocumentsIterator(self._parent.__iter__(), self._index, self._count)

  def __str__(self) -> str:
    return f"ShardedDocuments({self._index} of {self._count})"


class _ShardedDocumentsIterator(grain.DatasetIterator):

  def __init__(self, documents: grain.DatasetIterator, index: int, count: int):
    super().__init__(documents)
    self._count = count
    self._skip = index  # documents of other shards before this shard's next one

  @property
  def stats(self) -> ReadStats | None:
    return getattr(self._parent, "stats", None)

  def __next__(self) -> str:
    self._assert_not_closed()
    while self._skip:
      next(self._parent)
      self._skip -= 1
    text = next(self._parent)
    self._skip = self._count - 1
    return text

  def get_state(self) -> dict[str, Any]:
    return {"documents": self._parent.get_state(), "skip": self._skip}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["documents"])
    self._skip = int(state["skip"])


# ----------------------------------------------------------------------------- packing


class TokenizerLike(Protocol):
  eos_id: int

  def encode(self, text: str) -> list[int]:
    ...


class Batch(NamedTuple):
  """One training batch; token ids, int32."""

  inputs_BxL: np.ndarray
  targets_BxL: np.ndarray


class PackedBatches(grain.IterDataset):
  """B persistent token streams cut into batches of L tokens: `Batch(inputs_BxL, targets_BxL)`.

  Each stream starts with eos; a document's tokens follow, then eos. Long documents are
  dealt in segments of at most `segment_tokens` tokens, each followed by eos, so that B
  streams can be fed from fewer, long documents (Shakespeare: 38 plays of ~40k tokens).
  Before each batch, streams 0..B-1 in turn take the next segment while they hold
  fewer than L+1 tokens; row b of the batch is stream b's first L+1 tokens
  (inputs = [:L], targets = [1:]), of which the first L are then dropped.

  Iteration ends when a stream cannot be filled: up to about B * (segment_tokens + L)
  tokens at the end of the data are not used.

  The iterator's `get_state()` holds the documents iterator's state plus the tokens read
  but not yet emitted (~B * segment_tokens, compressed), so `set_state` resumes with
  identical batches.
  For background prefetching wrap it in `grain.experimental.ThreadPrefetchIterDataset`.
  """

  def __init__(self, documents: grain.IterDataset | Iterable[str], tokenizer: TokenizerLike,
               batch_size: int, seq_len: int, segment_tokens: int | None = 2048):
    """`segment_tokens=None` deals whole documents (one long document feeds one stream)."""
    if batch_size < 1 or seq_len < 1:
      raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}.")
    if segment_tokens is not None and segment_tokens < 1:
      raise ValueError(f"segment_tokens must be >= 1 or None, got {segment_tokens}.")
    super().__init__(as_documents(documents))
    self._tokenizer = tokenizer
    self._shape = {"batch_size": batch_size, "seq_len": seq_len,
                   "segment_tokens": segment_tokens}

  def __iter__(self) -> _PackedBatchesIterator:
    return _PackedBatchesIterator(self._parent.__iter__(), self._tokenizer, **self._shape)

  def __str__(self) -> str:
    return f"PackedBatches({self._shape})"


class _PackedBatchesIterator(grain.DatasetIterator):

  def __init__(self, documents: grain.DatasetIterator, tokenizer: TokenizerLike, batch_size: int,
               seq_len: int, segment_tokens: int | None):
    super().__init__(documents)
    self._tokenizer = tokenizer
    self._eos = int(tokenizer.eos_id)
    self._shape = {"batch_size": batch_size, "seq_len": seq_len,
                   "segment_tokens": segment_tokens}
    self._seq_len, self._segment_tokens = seq_len, segment_tokens
    self._streams: list[list[int]] = [[self._eos] for _ in range(batch_size)]
    self._document: list[int] = []  # tokens of the current document (no eos)
    self._dealt = 0  # how many of them are in streams already

  @property
  def stats(self) -> ReadStats | None:
    """The documents iterator's counters (None for a source without them)."""
    return getattr(self._parent, "stats", None)

  def __next__(self) -> Batch:
    self._assert_not_closed()
    rows = self._seq_len + 1
    for stream in self._streams:
      while len(stream) < rows:
        stream.extend(self._next_segment())
    tokens_BxL1 = np.array([stream[:rows] for stream in self._streams], dtype=np.int32)
    for b, stream in enumerate(self._streams):
      self._streams[b] = stream[self._seq_len:]
    return Batch(inputs_BxL=np.ascontiguousarray(tokens_BxL1[:, :-1]),
                 targets_BxL=np.ascontiguousarray(tokens_BxL1[:, 1:]))

  def _next_segment(self) -> list[int]:
    """The next <= segment_tokens tokens of the document, and eos; StopIteration at the end."""
    while self._dealt == len(self._document):
      self._document = self._tokenizer.encode(next(self._parent))
      self._dealt = 0
    size = self._segment_tokens or len(self._document)
    segment = self._document[self._dealt:self._dealt + size]
    self._dealt += len(segment)
    return segment + [self._eos]

  def get_state(self) -> dict[str, Any]:
    return {"documents": self._parent.get_state(),
            "streams": [_pack_tokens(stream) for stream in self._streams],
            "document_rest": _pack_tokens(self._document[self._dealt:]),
            "shape": dict(self._shape)}

  def set_state(self, state: dict[str, Any]) -> None:
    if state["shape"] != self._shape:
      raise ValueError(f"This data state was saved with {state['shape']}, the pipeline now has "
                       f"{self._shape}; resume with the same batch size, sequence length and "
                       "segment_tokens (or start the data afresh).")
    self._parent.set_state(state["documents"])
    self._streams = [_unpack_tokens(stream) for stream in state["streams"]]
    self._document, self._dealt = _unpack_tokens(state["document_rest"]), 0


class PackedShards(grain.IterDataset):
  """Several `PackedBatches` side by side: the local rows of a batch whose streams are fed
  from separate document shards (`shard_documents`).

  `shards` maps shard index -> its documents; each shard packs `batch_size` streams, and
  a batch holds the shards' rows in ascending shard order. The iterator's state is
  {str(shard index): that shard's `PackedBatches` state}, so each shard's state can be
  saved and restored on its own (by whichever process reads that shard).
  """

  def __init__(self, shards: dict[int, grain.IterDataset | Iterable[str]], tokenizer: TokenizerLike,
               batch_size: int, seq_len: int, segment_tokens: int | None = 2048):
    if not shards:
      raise ValueError("PackedShards needs at least one shard.")
    super().__init__()
    self._packed = {int(s): PackedBatches(docs, tokenizer, batch_size, seq_len, segment_tokens)
                    for s, docs in sorted(shards.items())}

  def __iter__(self) -> _PackedShardsIterator:
    return _PackedShardsIterator({s: packed.__iter__() for s, packed in self._packed.items()})

  def __str__(self) -> str:
    return f"PackedShards({sorted(self._packed)})"


class _PackedShardsIterator(grain.DatasetIterator):

  def __init__(self, shards: dict[int, grain.DatasetIterator]):
    super().__init__()
    self._shards = shards

  def __next__(self) -> Batch:
    self._assert_not_closed()
    batches = [next(it) for it in self._shards.values()]
    return Batch(inputs_BxL=np.concatenate([b.inputs_BxL for b in batches]),
                 targets_BxL=np.concatenate([b.targets_BxL for b in batches]))

  def get_state(self) -> dict[str, Any]:
    return {str(s): it.get_state() for s, it in self._shards.items()}

  def set_state(self, state: dict[str, Any]) -> None:
    missing = sorted(set(map(str, self._shards)) - set(state))
    if missing:
      raise ValueError(f"the data state has no shard {missing} (it holds {sorted(state)}).")
    for s, it in self._shards.items():
      it.set_state(state[str(s)])


def join_documents(tokenizer: TokenizerLike, texts: Iterable[str]) -> np.ndarray:
  """Several documents as one int32 id stream: their ids joined by eos (none before the
  first). `evaluate.encode_documents` and `ContiguousBatches` read a corpus so."""
  ids: list[int] = []
  for i, text in enumerate(texts):
    if i:
      ids.append(int(tokenizer.eos_id))
    ids.extend(tokenizer.encode(text))
  return np.asarray(ids, np.int32)


def contiguous_streams(ids: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
  """[B, n * L + 1]: B contiguous pieces of `ids`, piece b starting at b * (len // B), n
  the whole chunks of L tokens each piece holds with the target after them (n may be 0:
  then the pieces hold at most one id). `ContiguousBatches`' streams, and
  `experiments.learn`'s."""
  per_stream = len(ids) // batch_size
  length = max((per_stream - 1) // seq_len, 0) * seq_len + 1
  return np.stack([ids[b * per_stream: b * per_stream + length] for b in range(batch_size)])


class ContiguousBatches(grain.IterDataset):
  """A finite corpus as B contiguous pieces, one per stream (`experiments.learn`'s layout).

  All documents are read and encoded first (`join_documents`: joined by eos); the id
  stream is cut into B pieces of equal length (`contiguous_streams`) and
  stream b reads piece b from its start, L tokens per batch. Every batch thus holds B
  places spread over the whole corpus (PackedBatches' B streams instead read B
  neighbouring segments, a few documents at a time, so a pass walks the corpus document
  by document). Fewer than B x L + B tokens at the end are left over. Needs a finite
  document stream (num_epochs >= 1); memory: the whole corpus' ids (4 bytes a token).

  The iterator's state is the next batch's index (and the shape), so a resume is exact.
  """

  def __init__(self, documents: grain.IterDataset | Iterable[str], tokenizer: TokenizerLike,
               batch_size: int, seq_len: int):
    if batch_size < 1 or seq_len < 1:
      raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}.")
    super().__init__(as_documents(documents))
    self._tokenizer = tokenizer
    self._shape = {"batch_size": batch_size, "seq_len": seq_len}

  def __iter__(self) -> _ContiguousBatchesIterator:
    return _ContiguousBatchesIterator(self._parent, self._tokenizer, **self._shape)

  def __str__(self) -> str:
    return f"ContiguousBatches({self._shape})"


class _ContiguousBatchesIterator(grain.DatasetIterator):

  def __init__(self, documents: grain.IterDataset, tokenizer: TokenizerLike, batch_size: int,
               seq_len: int):
    super().__init__()
    self._shape = {"batch_size": batch_size, "seq_len": seq_len}
    docs = documents.__iter__()
    self._streams = contiguous_streams(join_documents(tokenizer, docs), batch_size, seq_len)
    self.stats = getattr(docs, "stats", None)
    self._chunks = max((self._streams.shape[1] - 1) // seq_len, 0)
    self._next = 0

  def __next__(self) -> Batch:
    self._assert_not_closed()
    if self._next >= self._chunks:
      raise StopIteration
    L = self._shape["seq_len"]
    x = self._streams[:, self._next * L: (self._next + 1) * L + 1]
    self._next += 1
    return Batch(inputs_BxL=np.ascontiguousarray(x[:, :-1]),
                 targets_BxL=np.ascontiguousarray(x[:, 1:]))

  def get_state(self) -> dict[str, Any]:
    return {"layout": "contiguous", "next_batch": self._next, "shape": dict(self._shape)}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("layout") != "contiguous" or state["shape"] != self._shape:
      raise ValueError(f"This data state was saved with {state.get('shape')} "
                       f"({state.get('layout', 'packed')}), the pipeline now has {self._shape} "
                       "(contiguous).")
    self._next = int(state["next_batch"])


def _pack_tokens(tokens: list[int]) -> str:
  """Token ids as JSON-friendly text: base64 of zlib'd int32 (~2.3 bytes per token)."""
  raw = np.asarray(tokens, dtype="<i4").tobytes()
  return base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


def _unpack_tokens(packed: str) -> list[int]:
  return np.frombuffer(zlib.decompress(base64.b64decode(packed)), dtype="<i4").tolist()
