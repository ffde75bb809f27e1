"""Held-out evaluation of a brain in nats/token, bits per UTF-8 byte and top-1 accuracy.

Scoring convention (the one of `neurogen_jax.baselines`, so rows of one table compare):
the held-out token ids y[0..L-1] are ONE sequence. The brain predicts y[t] for
t = 1..L-1 from the tokens before it, run forward with its state carried from token to
token; the first token y[0] costs -ln p(y[0]) under the add-one `UnigramModel` fitted
on the training ids (uniform 1/V when no training ids are given), as for every row.
total_nats = -ln p_unigram(y[0]) - sum_t ln p_brain(y[t] | y[<t]);
bits/byte = total_nats / ln 2 / UTF-8 bytes of the text; nats/token = total_nats / L;
top-1 over the same L predictions (the first is the unigram's argmax).

Parallel streams (`stream_layout`): the L-1 predictions are cut into B contiguous pieces
of (nearly) equal length, one per stream, so B copies of the brain score the text at
once (weights shared, state per stream). Each stream starts from a fresh state
`warmup` tokens before its piece (fewer for the first piece, which starts at y[0]):
those warm-up predictions only rebuild the context the brain would have had on one
long stream and are NOT scored. Streams are padded at the end to a whole number of
chunks; padding is never scored. Every prediction t = 1..L-1 is scored exactly once.
The brain's memory (traces of tau_trace = 50 ms, adaptation of 200 ms, ~100 ms of
simulated time per token) lasts a few tokens. Measured on a trained tiny brain (1,000
predictions): 16 cold-started pieces cost 1.4% more nats than one stream; with 8 or 32
warm-up tokens they land within 0.6% of it, on either side (spiking dynamics diverge
chaotically from tiny float differences, so no two layouts agree bit for bit).

The homeostatic thresholds `theta_N` learned in training are part of the model
(they live in `BrainState`); pass them, or the brain is scored with zero offsets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import baselines, brain, data, learning
from neurogen_jax.brain import Params
from neurogen_jax.config import BrainConfig
from neurogen_jax.metrics import EvalResult, format_table

DEFAULT_WARMUP = 32


class StreamLayout(NamedTuple):
  """Where each prediction goes: B streams of T steps (T a multiple of the chunk length).

  position_BxT: index p of the prediction made at that step (input y[p], target
    y[p+1]), or -1 for padding.
  scored_BxT: True where that prediction counts (not warm-up, not padding).
  """

  position_BxT: np.ndarray
  scored_BxT: np.ndarray


def stream_layout(n_predictions: int, batch_size: int, chunk_len: int,
                  warmup: int = DEFAULT_WARMUP) -> StreamLayout:
  """Cuts predictions 0..n-1 into min(batch_size, n) contiguous scored pieces (see module doc)."""
  if n_predictions < 1:
    raise ValueError(f"need at least one prediction (a text of >= 2 tokens), got {n_predictions}")
  if batch_size < 1 or chunk_len < 1 or warmup < 0:
    raise ValueError(f"batch_size and chunk_len must be >= 1 and warmup >= 0, got "
                     f"{batch_size}, {chunk_len}, {warmup}")
  b = min(batch_size, n_predictions)
  bounds = (np.arange(b + 1) * n_predictions) // b
  starts = np.maximum(bounds[:-1] - warmup, 0)
  lengths = bounds[1:] - starts
  steps = -(-int(lengths.max()) // chunk_len) * chunk_len
  position = np.full((b, steps), -1, np.int64)
  scored = np.zeros((b, steps), bool)
  for i in range(b):  # a loop over streams, not tokens
    pos = np.arange(starts[i], bounds[i + 1])
    position[i, :pos.size] = pos
    scored[i, :pos.size] = pos >= bounds[i]
  return StreamLayout(position, scored)


def _token_array(ids, name: str) -> np.ndarray:
  """`ids` as int64; ValueError for text, floats or bools (no silent truncation)."""
  if isinstance(ids, (str, bytes)):
    raise ValueError(f"{name} must be token ids, got text; encode it with the tokenizer first.")
  arr = np.asarray(ids)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be integer token ids, got dtype {arr.dtype}; encode the text "
                     "with the tokenizer first.")
  return arr.astype(np.int64)


def score_predictions(params: Params, config: BrainConfig, inputs: np.ndarray, targets: np.ndarray,
                      *, theta_N: jax.Array | np.ndarray | None = None, batch_size: int = 64,
                      chunk_len: int = 64, warmup: int = DEFAULT_WARMUP,
                      log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Runs the brain forward over `inputs` and scores `targets` (both int, length n).

  Prediction p reads input inputs[p] (after inputs[<p] of its stream) and is scored on
  targets[p]. For a text y: inputs = y[:-1], targets = y[1:]; a context-shuffled control
  passes permuted inputs with the same targets.
  Returns (nats [n] float64, top-1 hits [n] bool), each prediction scored once.
  """
  inputs = _token_array(inputs, "inputs")
  targets = _token_array(targets, "targets")
  if inputs.shape != targets.shape or inputs.ndim != 1:
    raise ValueError(f"inputs and targets must be 1-D of one length, got {inputs.shape}, {targets.shape}")
  for name, ids in (("inputs", inputs), ("targets", targets)):
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
      raise ValueError(f"{name} ids must lie in [0, {config.vocab_size}) (the brain's vocab_size), "
                       f"got [{ids.min()}, {ids.max()}]; was the text encoded with another tokenizer?")
  layout = stream_layout(inputs.size, batch_size, chunk_len, warmup)
  safe = np.maximum(layout.position_BxT, 0)
  inputs_BxT = jnp.asarray(inputs[safe], jnp.int32)
  targets_BxT = jnp.asarray(targets[safe], jnp.int32)
  b, steps = layout.position_BxT.shape
  bstate = brain.init_state(config, b)
  if theta_N is not None:
    theta_N = jnp.asarray(theta_N, jnp.float32)
    if theta_N.shape != bstate.theta_N.shape:
      raise ValueError(f"theta_N has shape {theta_N.shape}, the brain has {bstate.theta_N.shape}")
    bstate = bstate._replace(theta_N=theta_N)
  nats_chunks, hit_chunks = [], []
  t0 = time.perf_counter()
  n_chunks = steps // chunk_len
  for c in range(n_chunks):
    sl = slice(c * chunk_len, (c + 1) * chunk_len)
    bstate, nats_BxL, hits_BxL = learning.eval_chunk(params, bstate, inputs_BxT[:, sl],
                                                     targets_BxT[:, sl], config=config)
    nats_chunks.append(nats_BxL)
    hit_chunks.append(hits_BxL)
    if log is not None and (c + 1) % max(1, n_chunks // 10) == 0:
      jax.block_until_ready(nats_BxL)
      log(f"  eval chunk {c + 1}/{n_chunks} ({b} streams x {chunk_len} tokens), "
          f"{time.perf_counter() - t0:.1f} s")
  nats_BxT = np.concatenate([np.asarray(x, np.float64) for x in nats_chunks], axis=1)
  hits_BxT = np.concatenate([np.asarray(x) > 0.5 for x in hit_chunks], axis=1)
  if not np.all(np.isfinite(nats_BxT[layout.scored_BxT])):
    raise FloatingPointError("the brain produced non-finite losses on the evaluation text")
  nats = np.zeros(inputs.size, np.float64)
  hits = np.zeros(inputs.size, bool)
  pos = layout.position_BxT[layout.scored_BxT]
  nats[pos] = nats_BxT[layout.scored_BxT]
  hits[pos] = hits_BxT[layout.scored_BxT]
  return nats, hits


def first_token_cost(first_token: int, vocab_size: int, train_ids: np.ndarray | None
                     ) -> tuple[float, bool]:
  """(nats, top-1 hit) of y[0] under the add-one unigram of `baselines` (uniform without ids)."""
  uni = baselines.UnigramModel(vocab_size)
  if train_ids is not None:
    uni.fit(train_ids)
    return -uni.token_log_prob(first_token), first_token == uni.argmax()
  return math.log(vocab_size), False  # uniform: no argmax to speak of


def evaluate_tokens(params: Params, config: BrainConfig, token_ids: Sequence[int] | np.ndarray,
                    text_bytes_len: int, batch_size: int = 64, chunk_len: int = 64, *,
                    train_ids: np.ndarray | None = None,
                    theta_N: jax.Array | np.ndarray | None = None,
                    warmup: int = DEFAULT_WARMUP, name: str = "neurogen",
                    log: Callable[[str], None] | None = None) -> EvalResult:
  """Scores a held-out token stream (see the module docstring for the convention).

  Args:
    params: trained brain parameters (vocab_size must cover the ids).
    config: the brain's config.
    token_ids: the held-out text's L >= 2 token ids, one sequence.
    text_bytes_len: UTF-8 bytes of the text those ids encode (bits/byte divide by it).
    batch_size: parallel streams B (fewer if the text has fewer predictions).
    chunk_len: tokens per jitted call.
    train_ids: training ids; the first token is scored by their add-one unigram, as in
      `baselines.run_baselines`. None: uniform 1/V.
    theta_N: learned homeostatic threshold offsets [N] (`BrainState.theta_N`).
    warmup: unscored context tokens replayed before each stream's piece.
    name: the row's name.
    log: progress printer (e.g. `print`), or None.
  Returns:
    EvalResult with n_tokens = L and n_bytes = text_bytes_len.
  """
  y = _token_array(token_ids, "token_ids")
  if y.ndim != 1 or y.size < 2:
    raise ValueError(f"token_ids must be a 1-D sequence of >= 2 ids, got shape {y.shape}")
  nats, hits = score_predictions(params, config, y[:-1], y[1:], theta_N=theta_N,
                                 batch_size=batch_size, chunk_len=chunk_len, warmup=warmup, log=log)
  first_nats, first_hit = first_token_cost(int(y[0]), config.vocab_size, train_ids)
  total = first_nats + float(nats.sum())
  top1 = (int(first_hit) + int(hits.sum())) / y.size
  return EvalResult.from_total(name, total, y.size, text_bytes_len, top1)


def evaluate_against_baselines(params: Params, config: BrainConfig, test_ids: np.ndarray,
                               test_text: str, train_ids: np.ndarray, train_text: str | None = None,
                               *, theta_N: jax.Array | np.ndarray | None = None,
                               batch_size: int = 64, chunk_len: int = 64,
                               warmup: int = DEFAULT_WARMUP, orders: Sequence[int] = (2, 3, 5),
                               name: str = "neurogen",
                               baseline_rows: Sequence[EvalResult] | None = None,
                               log: Callable[[str], None] | None = print) -> list[EvalResult]:
  """The brain's row next to unigram, KN `orders` and xz | train, on the same tokens.

  `test_ids` must encode exactly `test_text` (`encode_documents` gives both) with the
  tokenizer that made `train_ids`. `train_text=None` skips the xz row. Precomputed
  `baseline_rows` (from `baselines.run_baselines` on the same ids) are reused instead of
  fitting the n-grams again. Prints the table through `log`; returns the rows, the
  baselines first and the brain last.
  """
  test_ids = np.asarray(test_ids, np.int64)
  n_bytes = len(test_text.encode("utf-8"))
  if baseline_rows is None:
    baseline_rows = baselines.run_baselines(train_ids, test_ids, test_text, train_text,
                                            config.vocab_size, orders, verbose=log is not None)
  for r in baseline_rows:
    if r.n_tokens != test_ids.size or r.n_bytes != n_bytes:
      raise ValueError(f"baseline row {r.name!r} scored {r.n_tokens} tokens / {r.n_bytes} bytes, "
                       f"this text has {test_ids.size} / {n_bytes}: recompute the baselines")
  model = evaluate_tokens(params, config, test_ids, n_bytes, batch_size, chunk_len,
                          train_ids=train_ids, theta_N=theta_N, warmup=warmup, name=name, log=log)
  rows = list(baseline_rows) + [model]
  if log is not None:
    log(format_table(rows))
  return rows


def encode_documents(tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, str]:
  """One token stream for several documents: their ids joined by eos, and their joined text.

  eos separates documents as in training (`data.PackedBatches`); it encodes no bytes,
  so the text is the plain concatenation. int32 ids.
  """
  return data.join_documents(tokenizer, texts), "".join(texts)


def truncate_tokens(tokenizer, token_ids: np.ndarray, text: str, max_tokens: int
                    ) -> tuple[np.ndarray, str]:
  """The first <= max_tokens ids and exactly the text they encode (a prefix of `text`).

  A cut inside a character's byte pieces steps back to the character's start.
  """
  if max_tokens <= 0 or max_tokens >= len(token_ids):
    return np.asarray(token_ids), text
  for n in range(max_tokens, max(max_tokens - 8, 0), -1):
    prefix = tokenizer.decode(token_ids[:n])
    if "\ufffd" not in prefix[-1:] and text.startswith(prefix):
      return np.asarray(token_ids[:n]), prefix
  raise ValueError(f"the first {max_tokens} tokens do not decode to a prefix of the text; "
                   "were the ids made from this text by this tokenizer?")
