"""Document readers, Hugging Face offline behaviour, and exact-resume packing."""

import functools
import json
import pathlib
import tempfile
import time
import tracemalloc
from types import SimpleNamespace

import hypothesis
import hypothesis.strategies as st
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from neurogen_jax import corpus
from neurogen_jax import data
from neurogen_jax.tokenizer import ByteTokenizer

DOCS = ["First document.\nWith two lines.", "Zweites Dokument: äöü ß", "第三 🎉 doc",
        "  leading spaces and a tab\t", "x"]


def write_jsonl(path, docs):
  path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
  return path


def write_jsonl_zst(path, docs, frames=1):
  lines = [(json.dumps({"text": d, "meta": {"redpajama_set_name": "x"}}) + "\n").encode()
           for d in docs]
  step = -(-len(lines) // frames)
  chunks = [b"".join(lines[i:i + step]) for i in range(0, len(lines), step)]
  path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(c) for c in chunks))
  return path


def write_parquet(path, docs):
  pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), path, row_group_size=3)
  return path


def read_all(spec, **kwargs):
  iterator = iter(data.FileDocuments(data.resolve_files(spec), **kwargs))
  return list(iterator), iterator.stats


# ------------------------------------------------------------------------------ readers


@pytest.mark.parametrize("writer, name", [(write_jsonl, "d.jsonl"), (write_parquet, "d.parquet"),
                                          (write_jsonl_zst, "d.jsonl.zst")])
def test_each_record_format_round_trips(tmp_path, writer, name):
  path = writer(tmp_path / name, DOCS)
  docs, stats = read_all(str(path))
  assert docs == DOCS
  assert stats == data.ReadStats(documents=len(DOCS))


def test_multi_frame_zst_reads_across_frames(tmp_path):
  docs, _ = read_all(write_jsonl_zst(tmp_path / "d.jsonl.zst", DOCS, frames=3))
  assert docs == DOCS


def test_txt_is_one_document_per_file_in_directory_and_glob_order(tmp_path):
  for i, d in enumerate(DOCS):
    sub = tmp_path / ("b" if i % 2 else "a")
    sub.mkdir(exist_ok=True)
    (sub / f"{i}.txt").write_text(d, encoding="utf-8")
  (tmp_path / "a" / "README.md").write_text("not data")
  expected = [DOCS[0], DOCS[2], DOCS[4], DOCS[1], DOCS[3]]  # a/0 a/2 a/4 b/1 b/3
  assert read_all(str(tmp_path))[0] == expected
  assert read_all(str(tmp_path / "**" / "*.txt"))[0] == expected
  assert read_all(f"{tmp_path / 'b'},{tmp_path / 'a' / '0.txt'}")[0] == [DOCS[1], DOCS[3], DOCS[0]]
  assert read_all([tmp_path / "a" / "2.txt", str(tmp_path / "a")])[0] == [DOCS[2], DOCS[0], DOCS[4]]


def test_mixed_formats_in_one_directory(tmp_path):
  write_jsonl(tmp_path / "1.jsonl", DOCS[:2])
  write_parquet(tmp_path / "2.parquet", DOCS[2:4])
  write_jsonl_zst(tmp_path / "3.jsonl.zst", DOCS[4:])
  assert read_all(tmp_path)[0] == DOCS


@pytest.mark.parametrize("spec, message", [("nothing/here/*.txt", "No file matches"),
                                           ("missing.jsonl", "No file matches"),
                                           ("{tmp}/notes.md", "unsupported file type"),
                                           ("{tmp}/empty_dir", "holds no data files")])
def test_bad_specs_say_what_is_wrong(tmp_path, spec, message):
  (tmp_path / "notes.md").write_text("x")
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(data.DataSourceError, match=message):
    data.resolve_files(spec.format(tmp=tmp_path))


def test_empty_documents_are_skipped_and_counted(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "a"}\n{"text": ""}\n\n{"text": " \\n "}\n{"text": "b"}\n')
  (tmp_path / "e.txt").write_text("")
  docs, stats = read_all(f"{path},{tmp_path / 'e.txt'}")
  assert docs == ["a", "b"]
  assert stats == data.ReadStats(documents=2, empty_skipped=4)


BAD_UTF8 = b"ab\xffcd\xc3(e\xef\xbf\xbdf"  # 2 invalid sequences and one genuine U+FFFD


@pytest.mark.parametrize("name", ["d.txt", "d.jsonl", "d.jsonl.zst", "d.parquet", "string.parquet",
                                  "large_string.parquet"])
def test_invalid_utf8_is_replaced_and_counted(tmp_path, name):
  path = tmp_path / name
  line = b'{"text": "' + BAD_UTF8 + b'"}\n'
  if name.endswith(".txt"):
    path.write_bytes(BAD_UTF8)
  elif name.endswith(".jsonl"):
    path.write_bytes(line)
  elif name.endswith(".zst"):
    path.write_bytes(zstandard.ZstdCompressor().compress(line))
  elif name == "d.parquet":
    pq.write_table(pa.table({"text": pa.array([BAD_UTF8], pa.binary())}), path)
  else:  # a string column holding invalid UTF-8 (a damaged file; found by the fuzz test)
    kind = pa.large_string() if name.startswith("large") else pa.string()
    raw = pa.large_binary() if name.startswith("large") else pa.binary()
    pq.write_table(pa.table({"text": pa.array([BAD_UTF8], raw).view(kind)}), path)
  docs, stats = read_all(path)
  assert docs == ["ab\ufffdcd\ufffd(e\ufffdf"]
  assert stats.replacement_chars == 2


def test_lone_surrogate_escapes_in_json_become_replacements(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "a\\ud800b"}\n')
  docs, stats = read_all(path)
  assert docs[0].startswith("a") and docs[0].endswith("b") and "\ufffd" in docs[0]
  assert stats.replacement_chars >= 1
  docs[0].encode("utf-8")  # encodable, so a tokenizer can take it


@pytest.mark.parametrize("content, where", [(b'{"text": "a"}\n{"text": \n', ":2: not a JSON line"),
                                            (b'{"body": "a"}\n', ":1: no string field 'text'"),
                                            (b'["text"]\n', ":1: no string field 'text'")])
def test_malformed_json_lines_name_file_and_line(tmp_path, content, where):
  path = tmp_path / "d.jsonl"
  path.write_bytes(content)
  with pytest.raises(data.DataSourceError, match=f"d.jsonl{where}"):
    read_all(path)


def test_parquet_without_text_column_is_a_clear_error(tmp_path):
  pq.write_table(pa.table({"body": ["a"]}), tmp_path / "d.parquet")
  with pytest.raises(data.DataSourceError, match="no column 'text'"):
    read_all(tmp_path / "d.parquet")


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.zst"])
def test_one_huge_line_costs_about_the_line(tmp_path, name):
  huge = "word " * 3_000_000  # 15 MB in one line
  path = tmp_path / name
  writer = write_jsonl if name == "d.jsonl" else write_jsonl_zst
  writer(path, [huge, "tail"])
  line_bytes = len(huge)
  tracemalloc.start()
  try:
    iterator = iter(data.FileDocuments([path]))
    lengths = [len(doc) for doc in iterator]
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert lengths == [line_bytes, 4]
  # Reading, decoding and parsing each hold two copies at most; ~3x is measured.
  assert peak < 3.5 * line_bytes, f"peak {peak / 1e6:.0f} MB for a {line_bytes / 1e6:.0f} MB line"


FUZZ_SUFFIXES = ["txt", "jsonl", "jsonl.zst", "parquet"]


@functools.cache
def valid_file_bytes(suffix):
  """A well-formed file of each kind, to be truncated and corrupted by the fuzz test."""
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / f"valid.{suffix}"
    writers = {"txt": lambda p, d: p.write_text(d[0]), "jsonl": write_jsonl,
               "jsonl.zst": write_jsonl_zst, "parquet": write_parquet}
    writers[suffix](path, DOCS)
    return path.read_bytes()


def json_line_bytes():
  value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.sampled_from(["text", "meta", "x"]), inner, max_size=3),
                       max_leaves=6)
  return st.lists(value.map(lambda v: json.dumps(v).encode()), max_size=5).map(b"\n".join)


@st.composite
def file_payloads(draw, suffix):
  """Random bytes, random JSON lines, or a valid file truncated with one byte changed."""
  kind = draw(st.sampled_from(["bytes", "json", "damaged"]))
  if kind == "bytes":
    return draw(st.binary(max_size=300))
  if kind == "json":
    payload = draw(json_line_bytes())
    return zstandard.ZstdCompressor().compress(payload) if suffix == "jsonl.zst" else payload
  valid = valid_file_bytes(suffix)
  cut = draw(st.integers(0, len(valid)))
  payload = bytearray(valid[:cut])
  if payload:
    payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
  return bytes(payload)


@hypothesis.settings(max_examples=80, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data_=st.data(), suffix=st.sampled_from(FUZZ_SUFFIXES))
def test_readers_on_arbitrary_bytes_yield_text_or_a_clear_error(tmp_path, data_, suffix):
  path = tmp_path / f"fuzz.{suffix}"
  path.write_bytes(data_.draw(file_payloads(suffix)))
  try:
    docs, stats = read_all(path)
  except data.DataSourceError as e:
    assert "fuzz" in str(e)
    return
  assert all(isinstance(d, str) and not d.isspace() and d for d in docs)
  assert stats.documents == len(docs)
  for d in docs:
    d.encode("utf-8")


def test_file_documents_resume_mid_file_and_across_epochs(tmp_path):
  many = [f"document {i}" for i in range(2500)]  # parquet batches of 1024 rows: skip spans two
  files = [write_parquet(tmp_path / "a.parquet", many), write_jsonl(tmp_path / "b.jsonl", DOCS)]
  dataset = data.FileDocuments(files, num_epochs=2)
  everything = list(iter(dataset))
  assert everything == (many + DOCS) * 2
  for cut in (0, 1, 2049, 2500, 2502, 2505, 2505 + 2499):
    iterator = iter(dataset)
    for _ in range(cut):
      next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    resumed = iter(dataset)
    resumed.set_state(state)
    assert list(resumed) == everything[cut:]
    assert resumed.stats.documents == len(everything)


@pytest.mark.parametrize("make_source", [list, tuple, lambda texts: dict.fromkeys(texts).keys()])
def test_text_documents_resume_for_sequences_and_reiterables(make_source):
  dataset = data.TextDocuments(make_source(["a", "", "b", "c", "d"]))
  iterator = iter(dataset)
  head = [next(iterator), next(iterator)]
  resumed = iter(dataset)
  resumed.set_state(json.loads(json.dumps(iterator.get_state())))
  assert head + list(resumed) == ["a", "b", "c", "d"]
  assert resumed.stats == data.ReadStats(documents=4, empty_skipped=1)


def test_text_documents_reject_a_single_string_and_non_strings():
  with pytest.raises(TypeError, match="one string"):
    data.TextDocuments("just one document")
  with pytest.raises(data.DataSourceError, match="document 1 is a int"):
    list(iter(data.TextDocuments(["a", 3])))


# --------------------------------------------------------------------------- Hugging Face


def test_hf_offline_fails_fast_and_names_local_files(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  start = time.monotonic()
  with pytest.raises(data.DataSourceError) as error:
    data.hf_documents("cerebras/SlimPajama-627B")
  assert time.monotonic() - start < 5
  assert "--config.data.files='path/*.jsonl.zst'" in str(error.value)
  assert "HF_HUB_OFFLINE" in str(error.value)


def test_hf_unreachable_hub_fails_fast(monkeypatch):
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # discard port: refused at once
  start = time.monotonic()
  with pytest.raises(data.DataSourceError, match=r"unreachable.*--config\.data\.files="):
    data.hf_documents("DKYoon/SlimPajama-6B")
  assert time.monotonic() - start < 5


def test_hf_documents_resume_from_the_datasets_state(tmp_path):
  datasets = pytest.importorskip("datasets")
  path = write_jsonl(tmp_path / "d.jsonl", [f"doc {i}" for i in range(30)] + [""])
  stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
  dataset = data.HFDocuments(stream)
  iterator = iter(dataset)
  head = [next(iterator) for _ in range(7)]
  state = json.loads(json.dumps(iterator.get_state()))
  tail = list(iterator)
  resumed = iter(dataset)
  resumed.set_state(state)
  assert head + list(resumed) == head + tail == [f"doc {i}" for i in range(30)]
  assert resumed.stats == data.ReadStats(documents=30, empty_skipped=1)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("make_cfg", [SimpleNamespace, ml_collections.ConfigDict])
def test_make_documents_reads_files_from_either_config_kind(tmp_path, make_cfg):
  write_jsonl(tmp_path / "d.jsonl", DOCS)
  fields = dict(files=str(tmp_path / "*.jsonl"), dataset_name="shakespeare", split="train")
  cfg = make_cfg(fields) if make_cfg is ml_collections.ConfigDict else make_cfg(**fields)
  assert list(iter(data.make_documents(cfg, num_epochs=2))) == DOCS * 2


def test_make_documents_picks_the_shakespeare_split(tmp_path, monkeypatch):
  train, heldout = [tmp_path / "a_gut.txt"], [tmp_path / "z_gut.txt"]
  train[0].write_text("train text")
  heldout[0].write_text("held-out text")
  monkeypatch.setattr(corpus, "shakespeare_split", lambda: (train, heldout))
  cfg = SimpleNamespace(files="", dataset_name="shakespeare", split="train")
  assert list(iter(data.make_documents(cfg))) == ["train text"]
  cfg.split = "heldout"
  assert list(iter(data.make_documents(cfg))) == ["held-out text"]
  cfg.split = "validation"
  with pytest.raises(data.DataSourceError, match="splits"):
    data.make_documents(cfg)


def test_make_documents_for_a_hub_name_offline_raises(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cfg = SimpleNamespace(files=[], dataset_name="cerebras/SlimPajama-627B", split="train")
  with pytest.raises(data.DataSourceError, match="config.data.files"):
    data.make_documents(cfg)


# ------------------------------------------------------------------------------ packing

TEXTS = [f"doc{i}:" + "abcdefghij"[: 1 + (7 * i) % 10] * (1 + i % 4) for i in range(40)]


def batches(dataset, count=None):
  iterator = iter(dataset)
  return [(b.inputs_BxL, b.targets_BxL) for b in (iterator if count is None else
                                                   (next(iterator) for _ in range(count)))]


def test_packed_batches_shapes_and_targets_shifted_by_one():
  out = batches(data.PackedBatches(TEXTS, ByteTokenizer(), batch_size=3, seq_len=8))
  assert len(out) >= 10
  for (inputs, targets), (next_inputs, _) in zip(out, out[1:]):
    assert inputs.shape == targets.shape == (3, 8)
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    np.testing.assert_array_equal(next_inputs[:, 0], targets[:, -1])  # streams continue


def test_equal_documents_are_dealt_round_robin_with_eos_between():
  eos = ByteTokenizer.eos_id
  texts = [f"doc{i:02d}" for i in range(12)]  # 5 bytes + eos each
  out = batches(data.PackedBatches(texts, ByteTokenizer(), batch_size=3, seq_len=6))
  for b in range(3):
    stream = np.concatenate([inputs[b] for inputs, _ in out] + [out[-1][1][b, -1:]])
    expected = [eos]
    for text in texts[b::3]:
      expected += list(text.encode()) + [eos]
    np.testing.assert_array_equal(stream, expected[:len(stream)])
    assert len(stream) == 4 * 6 + 1  # 4 batches use 4 docs per stream; the rest is dropped


def test_long_documents_are_cut_into_segments_each_ending_in_eos():
  eos = ByteTokenizer.eos_id
  out = batches(data.PackedBatches(["abcdefghij", "XY"], ByteTokenizer(), batch_size=2,
                                   seq_len=3, segment_tokens=4))
  stream_0 = np.concatenate([out[0][0][0], out[0][1][0, -1:]])
  stream_1 = np.concatenate([out[0][0][1], out[0][1][1, -1:]])
  np.testing.assert_array_equal(stream_0, [eos, *b"abc"])  # eos a b c d eos i j eos
  np.testing.assert_array_equal(stream_1, [eos, *b"efg"])  # eos e f g h eos X Y eos
  second_0 = np.concatenate([out[1][0][0], out[1][1][0, -1:]])
  second_1 = np.concatenate([out[1][0][1], out[1][1][1, -1:]])
  np.testing.assert_array_equal(second_0, [*b"cd", eos, *b"i"])
  np.testing.assert_array_equal(second_1, [*b"gh", eos, *b"X"])
  assert len(out) == 2


def test_packing_is_deterministic():
  dataset = data.PackedBatches(TEXTS, ByteTokenizer(), batch_size=4, seq_len=5)
  for (a_in, a_tg), (b_in, b_tg) in zip(batches(dataset), batches(dataset), strict=True):
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_tg, b_tg)


@pytest.mark.parametrize("source", ["list", "files"])
@pytest.mark.parametrize("cut", [0, 1, 4, 9])
def test_resume_from_state_gives_the_same_next_five_batches(tmp_path, source, cut):
  documents = TEXTS
  if source == "files":
    write_jsonl(tmp_path / "a.jsonl", TEXTS[:25])
    write_jsonl_zst(tmp_path / "b.jsonl.zst", TEXTS[25:])
    documents = data.FileDocuments(data.resolve_files(tmp_path), num_epochs=None)
  dataset = data.PackedBatches(documents, ByteTokenizer(), batch_size=3, seq_len=7,
                               segment_tokens=9)
  iterator, resumed, _ = assert_resumes(dataset, cut, 5)
  assert resumed.stats == iterator.stats


def assert_resumes(dataset, cut, count):
  """After `cut` batches, an iterator restored from the (JSON round-tripped) state gives
  the same next `count` batches -> (the first iterator, the restored one, the state)."""
  iterator = iter(dataset)
  for _ in range(cut):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = [next(iterator) for _ in range(count)]
  resumed = iter(dataset)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(count)), strict=True):
    np.testing.assert_array_equal(want.inputs_BxL, got.inputs_BxL)
    np.testing.assert_array_equal(want.targets_BxL, got.targets_BxL)
  return iterator, resumed, state


def test_contiguous_batches_are_b_pieces_of_the_whole_corpus():
  """layout 'contiguous' (experiments.learn's): the documents joined by eos, cut into B
  equal pieces, stream b reading piece b from its start L tokens at a time; what is left
  over is fewer than L + 1 tokens per stream."""
  eos, b, seq = ByteTokenizer.eos_id, 3, 5
  ids = []
  for k, text in enumerate(TEXTS):
    ids += ([eos] if k else []) + list(text.encode())
  per = len(ids) // b
  out = batches(data.ContiguousBatches(TEXTS, ByteTokenizer(), batch_size=b, seq_len=seq))
  assert len(out) == (per - 1) // seq >= 10
  for c, (inputs, targets) in enumerate(out):
    assert inputs.shape == targets.shape == (b, seq) and inputs.dtype == np.int32
    for s_ in range(b):
      piece = ids[s_ * per + c * seq: s_ * per + (c + 1) * seq + 1]
      np.testing.assert_array_equal(inputs[s_], piece[:-1])
      np.testing.assert_array_equal(targets[s_], piece[1:])
  # Each batch spans the corpus: its streams start a third of the corpus apart.
  assert out[0][0][1, 0] == ids[per] and out[0][0][2, 0] == ids[2 * per]


@pytest.mark.parametrize("cut", [0, 3])
def test_contiguous_batches_resume_exactly_and_refuse_other_states(cut):
  dataset = data.ContiguousBatches(TEXTS, ByteTokenizer(), batch_size=3, seq_len=5)
  _, resumed, state = assert_resumes(dataset, cut, 4)
  other = iter(data.ContiguousBatches(TEXTS, ByteTokenizer(), batch_size=4, seq_len=5))
  with pytest.raises(ValueError, match="contiguous"):
    other.set_state(state)
  packed = iter(data.PackedBatches(TEXTS, ByteTokenizer(), batch_size=3, seq_len=5))
  with pytest.raises(ValueError, match="contiguous"):
    resumed.set_state(packed.get_state())


def test_resume_with_other_batch_shape_is_refused():
  iterator = iter(data.PackedBatches(TEXTS, ByteTokenizer(), batch_size=3, seq_len=7))
  next(iterator)
  other = iter(data.PackedBatches(TEXTS, ByteTokenizer(), batch_size=4, seq_len=7))
  with pytest.raises(ValueError, match="same batch size"):
    other.set_state(iterator.get_state())


def test_every_document_token_is_a_target_once_with_one_stream():
  tokenizer = ByteTokenizer()
  out = batches(data.PackedBatches(TEXTS, tokenizer, batch_size=1, seq_len=16,
                                   segment_tokens=None))
  targets = np.concatenate([t[0] for _, t in out])
  expected = np.concatenate([list(t.encode()) + [tokenizer.eos_id] for t in TEXTS])
  assert len(expected) - 16 < len(targets) <= len(expected)  # only the last partial row is lost
  np.testing.assert_array_equal(targets, expected[:len(targets)])


def test_packing_a_grain_file_pipeline_reports_read_stats(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_bytes(b'{"text": "a\xffb"}\n{"text": ""}\n' * 4)
  iterator = iter(data.PackedBatches(data.FileDocuments([path], num_epochs=None), ByteTokenizer(),
                                     batch_size=2, seq_len=3))
  next(iterator)
  assert iterator.stats.replacement_chars >= 1 and iterator.stats.empty_skipped >= 1


# ------------------------------------------------------------------ shards (several hosts)


def _sources(tmp_path, kind):
  """TEXTS as a document source of `kind`; files hold 4, 8, 12 or 16 of them each."""
  if kind == "list":
    return TEXTS
  if kind in ("4 files", "3 files"):
    cuts = [0, 4, 12, 24, 40] if kind == "4 files" else [0, 10, 25, 40]
    paths = [write_jsonl(tmp_path / f"{i}.jsonl", TEXTS[a:b])
             for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    return data.FileDocuments(paths)
  datasets = pytest.importorskip("datasets")
  return data.HFDocuments(datasets.Dataset.from_dict({"text": TEXTS}).to_iterable_dataset(
      num_shards=4))


@pytest.mark.parametrize("kind", ["list", "4 files", "3 files", "hf"])
@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_hold_every_document(tmp_path, kind, count):
  documents = _sources(tmp_path, kind)
  shards = [list(data.shard_documents(documents, i, count)) for i in range(count)]
  assert sorted(sum(shards, [])) == sorted(TEXTS)
  if kind == "list" or (kind == "3 files" and count == 2):  # by document: every count-th one
    assert shards == [TEXTS[i::count] for i in range(count)]
  if kind == "4 files" and count == 2:  # by file: files 0 and 2, files 1 and 3
    assert shards == [TEXTS[0:4] + TEXTS[12:24], TEXTS[4:12] + TEXTS[24:40]]
  assert list(data.shard_documents(documents, 0, 1)) == TEXTS


def test_sharded_documents_resume_exactly():
  shard = data.ShardedDocuments(data.TextDocuments(TEXTS), 1, 3)
  iterator = iter(shard)
  head = [next(iterator) for _ in range(4)]
  state = json.loads(json.dumps(iterator.get_state()))
  resumed = iter(shard)
  resumed.set_state(state)
  assert head + list(resumed) == head + list(iterator) == TEXTS[1::3]
  with pytest.raises(ValueError, match=r"shard index 3 is not in \[0, 3\)"):
    data.shard_documents(TEXTS, 3, 3)


def test_packed_shards_are_the_shards_side_by_side_and_resume_per_shard():
  """What S hosts read, one host reads side by side; each shard's state alone resumes it."""
  def shard(i):
    return data.shard_documents(TEXTS, i, 2)
  both = data.PackedShards({1: shard(1), 0: shard(0)}, ByteTokenizer(), batch_size=2, seq_len=5,
                           segment_tokens=7)
  alone = [data.PackedBatches(shard(i), ByteTokenizer(), batch_size=2, seq_len=5, segment_tokens=7)
           for i in range(2)]
  for (inputs, targets), (in0, tg0), (in1, tg1) in zip(batches(both, 6), batches(alone[0], 6),
                                                       batches(alone[1], 6)):
    assert inputs.shape == (4, 5)
    np.testing.assert_array_equal(inputs, np.concatenate([in0, in1]))
    np.testing.assert_array_equal(targets, np.concatenate([tg0, tg1]))
  iterator = iter(both)
  for _ in range(3):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  assert sorted(state) == ["0", "1"]
  expected = [next(iterator) for _ in range(3)]
  # Shard 1 on its own (process 1 of a two-host run) resumes from its part of the state.
  second = iter(data.PackedShards({1: shard(1)}, ByteTokenizer(), batch_size=2, seq_len=5,
                                  segment_tokens=7))
  second.set_state({"1": state["1"]})
  for want in expected:
    np.testing.assert_array_equal(next(second).inputs_BxL, want.inputs_BxL[2:])
  with pytest.raises(ValueError, match=r"no shard \['1'\]"):
    second.set_state({"0": state["0"]})
