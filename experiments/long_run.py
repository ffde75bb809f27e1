r"""A long stability run: the tiny brain with every plasticity mechanism on, for many tokens.

  python -m experiments.long_run                       # 1,000,000 tokens of Shakespeare
  python -m experiments.long_run --tokens=5000 --out=/tmp/long.json --data_files=my.txt

Trains the `tiny` config's brain (experiments/configs/tiny.py: byte tokens, 2,496
neurons) with e-prop, STDP, dopamine, tagging and capture, homeostasis and replay all on,
on the training split of the default Shakespeare corpus (endless passes), by
`learning.train_chunk` directly: no checkpoints, no resume, nothing but the run. Every
`--record_every` chunks it records:
  * whether every weight and state value is finite, and how many chunks were skipped by
    train_chunk's finiteness guard;
  * each area's mean firing rate (spikes per neuron per tick) and whether it lies inside
    the homeostatic band `PlasticityConfig.rate_band`, and the fraction of neurons whose
    running rate lies outside it;
  * the mean and standard deviation (over the interval's chunks) of the dopamine signal;
  * the mean loss (nats per token) over the interval.
It writes them to `--out` (JSON: "settings", "records", "summary") and prints a summary.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments.configs import tiny
from neurogen_jax import corpus, data, learning, readout
from neurogen_jax import train as train_lib
from neurogen_jax.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[1]
MECHANISMS = ("eprop", "stdp", "dopamine", "tagging", "homeostasis", "replay")

_TOKENS = flags.DEFINE_integer("tokens", 1_000_000, "Training tokens (all streams together).")
_RECORD_EVERY = flags.DEFINE_integer("record_every", 100, "Record statistics every this many "
                                     "chunks (and after the last).")
_OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "long_run.json"),
                           "Where to write the JSON.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Streams B (default: the tiny config's).")
_CHUNK = flags.DEFINE_integer("chunk_len", None, "Tokens per stream per chunk L (default: the "
                              "tiny config's).")
_LR = flags.DEFINE_float("learning_rate", None, "Readout learning rate (default: the tiny "
                         "config's).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_DATA_FILES = flags.DEFINE_string("data_files", "", "Local files instead of the Shakespeare "
                                  "training split (see data.resolve_files).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", str(corpus.cache_root() / "xla"),
    "Directory of compiled XLA programs reused by later runs ('' = off).")


@jax.jit
def _all_finite(ts: learning.TrainState) -> jax.Array:
  """Whether every floating value of the params, brain and plasticity state is finite."""
  ok = jnp.bool_(True)
  for leaf in jax.tree.leaves((ts.params, ts.brain_state, ts.plastic)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      ok &= jnp.all(jnp.isfinite(leaf))
  return ok


def run_long(tokens: int, record_every: int, batch_size: int | None = None,
             chunk_len: int | None = None, learning_rate: float | None = None, seed: int = 0,
             data_files: str = "", log=print) -> dict:
  """Trains and records (see the module docstring); returns the JSON-ready result."""
  if tokens < 1 or record_every < 1:
    raise ValueError(f"tokens and record_every must be >= 1, got {tokens}, {record_every}.")
  config = tiny.get_config()
  batch_size = batch_size or int(config.train.batch_size)
  chunk_len = chunk_len or int(config.train.chunk_len)
  if batch_size < 1 or chunk_len < 1:
    raise ValueError(f"batch_size and chunk_len must be >= 1, got {batch_size}, {chunk_len}.")
  learning_rate = float(learning_rate if learning_rate is not None else config.train.learning_rate)
  config.data.files = data_files
  tokenizer = ByteTokenizer()
  brain_config = train_lib.brain_config_from(config, tokenizer.vocab_size)
  pcfg = train_lib.plasticity_config_from(config).replace(**{m: True for m in MECHANISMS})
  optimizer = learning.make_optimizer(learning_rate, config.train.grad_clip,
                                      config.train.weight_decay)
  lo, hi = pcfg.rate_band
  areas = brain_config.area_names

  documents = data.make_documents(config.data, num_epochs=None)  # endless passes
  sample = "".join(train_lib.sample_texts(documents, int(config.data.sample_chars)))
  batches = iter(data.PackedBatches(documents, tokenizer, batch_size=batch_size,
                                    seq_len=chunk_len,
                                    segment_tokens=int(config.data.max_seq_length)))
  init = jax.jit(functools.partial(learning.init_train_state, brain_config, pcfg, optimizer,
                                   batch=batch_size))
  ts = init(jax.random.PRNGKey(seed))
  bias = readout.unigram_bias(tokenizer.encode(sample), brain_config.vocab_size)
  ts = ts._replace(params=ts.params._replace(b_out=jnp.asarray(bias)))
  step = functools.partial(learning.train_chunk, config=brain_config, pcfg=pcfg,
                           optimizer=optimizer)

  n_chunks = math.ceil(tokens / (batch_size * chunk_len))
  records, pending = [], []  # pending: the interval's per-chunk metrics, fetched at once
  start = time.perf_counter()
  for chunk in range(1, n_chunks + 1):
    batch = next(batches)
    ts, metrics = step(ts, jnp.asarray(batch.inputs_BxL), jnp.asarray(batch.targets_BxL))
    pending.append((metrics.loss, metrics.finite, metrics.rates_A, metrics.plastic["dopamine"]))
    if chunk % record_every and chunk != n_chunks:
      continue
    loss, finite, rates, dopamine = (np.asarray(x) for x in zip(*jax.device_get(pending)))
    pending = []
    rates_A = rates.mean(axis=0)
    rate_N = np.asarray(ts.brain_state.rate_N)
    record = {
        "chunk": chunk, "tokens": chunk * batch_size * chunk_len,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "weights_finite": bool(_all_finite(ts)),
        "nonfinite_chunks": int(np.sum(~finite.astype(bool))),
        "loss": float(np.mean(loss[finite.astype(bool)])) if finite.any() else None,
        "rates": {a: float(r) for a, r in zip(areas, rates_A)},
        "rates_in_band": {a: bool(lo <= r <= hi) for a, r in zip(areas, rates_A)},
        "neurons_outside_band": float(np.mean((rate_N < lo) | (rate_N > hi))),
        "dopamine_mean": float(np.mean(dopamine)), "dopamine_std": float(np.std(dopamine)),
    }
    records.append(record)
    loss_text = "n/a" if record["loss"] is None else f"{record['loss']:.4f}"
    log(f"chunk {chunk}/{n_chunks} | {record['tokens']:,} tok | loss {loss_text} | finite "
        f"{record['weights_finite']} | rates "
        + " ".join(f"{a[:4]} {r:.2%}" for a, r in record["rates"].items())
        + f" | dopamine {record['dopamine_mean']:+.4f} ± {record['dopamine_std']:.4f}")
  elapsed = time.perf_counter() - start
  settings = {
      "config": "tiny", "tokens": n_chunks * batch_size * chunk_len, "tokens_requested": tokens,
      "batch_size": batch_size, "chunk_len": chunk_len, "learning_rate": learning_rate,
      "seed": seed, "data": data_files or "shakespeare train split",
      "neurons": brain_config.num_neurons, "synapses": brain_config.num_synapses,
      "mechanisms": {m: getattr(pcfg, m) for m in MECHANISMS},
      "rate_band": [lo, hi], "record_every": record_every,
      "device": str(jax.devices()[0]), "jax": jax.__version__,
  }
  losses = [r["loss"] for r in records if r["loss"] is not None]
  summary = {
      "chunks": n_chunks, "elapsed_s": round(elapsed, 1),
      "tokens_per_s": round(settings["tokens"] / elapsed, 1),
      "weights_always_finite": all(r["weights_finite"] for r in records),
      "nonfinite_chunks": sum(r["nonfinite_chunks"] for r in records),
      "areas_always_in_band": {a: all(r["rates_in_band"][a] for r in records) for a in areas},
      "max_neurons_outside_band": max(r["neurons_outside_band"] for r in records),
      "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
  }
  return {"settings": settings, "records": records, "summary": summary}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _COMPILATION_CACHE.value:
    train_lib.enable_compilation_cache(_COMPILATION_CACHE.value)
  try:
    result = run_long(_TOKENS.value, _RECORD_EVERY.value, _BATCH.value, _CHUNK.value, _LR.value,
                      _SEED.value, _DATA_FILES.value)
  except (ValueError, data.DataSourceError) as e:
    sys.exit(f"error: {e}")
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  s = result["summary"]
  band = result["settings"]["rate_band"]
  print(f"{result['settings']['tokens']:,} tokens, {s['chunks']:,} chunks in {s['elapsed_s']} s "
        f"({s['tokens_per_s']:,.0f} tok/s) on {result['settings']['device']}")
  print(f"weights always finite: {'yes' if s['weights_always_finite'] else 'NO'}; chunks skipped "
        f"for non-finite values: {s['nonfinite_chunks']}")
  print(f"areas always inside the band {band}: "
        + ", ".join(f"{a} {'yes' if ok else 'NO'}" for a, ok in s["areas_always_in_band"].items()))
  print(f"most neurons outside the band at a record: {s['max_neurons_outside_band']:.2%}")
  print(f"loss {s['first_loss']} -> {s['last_loss']} nats/token; written to {out}")


if __name__ == "__main__":
  app.run(main)
