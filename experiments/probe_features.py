"""How much do the brain's spike features know? A readout-capacity probe (no plasticity).

    python -m experiments.probe_features --cache=.corpus/shakespeare/learn_cache/KEY \
        --variants=default,broca_in,ticks5 --train_tokens=65536 --heldout_tokens=16384

For each brain variant (a fixed random brain, nothing in it learns) the script runs
`cognitive_step` over `--train_tokens` training tokens and `--heldout_tokens` held-out
tokens (B contiguous streams each), keeps two feature sets per token — Broca's read-phase
traces (the model's readout input) and every neuron's end-of-token trace — and fits the
model's readout form (layer norm -> N x D -> tied V x D logits + bias, Adam) offline on
them for two targets: the NEXT token (what the model must predict) and the CURRENT token
(how much of the input the features still hold). Held-out cross entropy in nats/token is
printed next to a unigram and an add-k bigram estimated from the same training tokens.

This is a diagnostic for the learning issue: if the current token cannot be decoded from
the features, no readout learning can beat a unigram model, and the fix belongs in the
brain's wiring (where the token drive enters, how many ticks, what is read), not in
the learning rules.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from neurogen_jax import brain, readout
from neurogen_jax.config import AREA_NAMES, BrainConfig, PhaseSpec, seed_phases

_CACHE = flags.DEFINE_string("cache", None, "learn cache directory (train_ids.npy, heldout_ids.npy).")
_VARIANTS = flags.DEFINE_list("variants", ["default"], "brain variants (see VARIANTS).")
_SCALE = flags.DEFINE_float("scale", 1.0, "brain scale")
_TRAIN = flags.DEFINE_integer("train_tokens", 65536, "training tokens for the offline readout fit")
_HELD = flags.DEFINE_integer("heldout_tokens", 16384, "held-out tokens scored")
_BATCH = flags.DEFINE_integer("batch", 128, "streams")
_DIM = flags.DEFINE_integer("dim", 512, "readout embedding dimension D")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "readout fit epochs")
_LR = flags.DEFINE_float("lr", 3e-3, "readout Adam learning rate")
_IMPL = flags.DEFINE_enum("implementation", "xla", ["xla", "pallas"], "kernels")
_OUT = flags.DEFINE_string("out", "", "JSON output file")


def _phases_with(broca_gain: float = 1.0, ticks=(2, 4, 6, 4, 4), all_in: float | None = None):
  """The seed phase table with Broca given `broca_gain` x Wernicke's token drive (the
  default table has 1.0; the first table had 0.0) and every driven area at least `all_in`."""
  out = []
  for ph in seed_phases(ticks):
    g = list(ph.input_gain)
    b = AREA_NAMES.index("broca")
    g[b] = broca_gain * g[AREA_NAMES.index("wernicke")]
    if all_in is not None and any(g):
      g = [max(x, all_in) for x in g]
    out.append(dataclasses.replace(ph, input_gain=tuple(g)))
  return tuple(out)


VARIANTS = {
    "default": {},
    "no_broca_in": {"phases": _phases_with(broca_gain=0.0)},
    "no_broca_in_ticks10": {"phases": _phases_with(broca_gain=0.0, ticks=(1, 2, 3, 2, 2))},
    "no_broca_in_input2": {"phases": _phases_with(broca_gain=0.0), "input_scale": 2.0},
    "ticks5": {"phases": seed_phases((1, 1, 1, 1, 1))},
    "ticks10": {"phases": seed_phases((1, 2, 3, 2, 2))},
    "strong_in": {"phases": _phases_with(all_in=1.0), "input_scale": 2.0},
    "input2": {"input_scale": 2.0},
}


def collect(config: BrainConfig, ids: np.ndarray, n_tokens: int, batch: int, key):
  """Runs the brain over `batch` contiguous streams: (broca_TxNr, all_TxN, cur_T, next_T)."""
  length = n_tokens // batch
  starts = np.linspace(0, len(ids) - length - 2, batch).astype(np.int64)
  toks_BxL = np.stack([ids[s:s + length + 1] for s in starts])
  params, state = brain.init(config, key, batch)

  @jax.jit
  def run(params, state, toks_LxB):
    def body(st, tok_B):
      st, _, aux = brain.cognitive_step(params, st, tok_B, config, collect=True)
      return st, (aux.features_BxNr.astype(jnp.bfloat16), aux.pre_BxN.astype(jnp.bfloat16),
                  jnp.mean(aux.rates_PxA, 0))
    return jax.lax.scan(body, state, toks_LxB)

  _, (broca_LxBxNr, all_LxBxN, rates_LxA) = run(params, state, jnp.asarray(toks_BxL[:, :-1].T))
  flat = lambda x: x.reshape(-1, x.shape[-1])
  return (flat(broca_LxBxNr), flat(all_LxBxN), toks_BxL[:, :-1].T.reshape(-1),
          toks_BxL[:, 1:].T.reshape(-1), np.asarray(jnp.mean(rates_LxA, 0)))


def fit_readout(f_train, y_train, f_held, y_held, vocab, bias_V, key) -> float:
  """Fits LN -> N x D -> tied logits on (f_train, y_train); held-out CE in nats/token."""
  n, d = f_train.shape[1], _DIM.value
  k1, k2 = jax.random.split(key)
  p = {"w_out": jnp.zeros((n, d)), "embed": jax.random.normal(k2, (vocab, d)),
       "b_out": jnp.asarray(bias_V)}
  opt = optax.adam(_LR.value)
  opt_state = opt.init(p)

  def loss(p, f, y):
    lg = readout.logits(p["embed"], p["w_out"], p["b_out"], f.astype(jnp.float32))
    return jnp.mean(readout.cross_entropy(lg, y))

  @jax.jit
  def step(p, opt_state, f, y):
    g = jax.grad(loss)(p, f, y)
    u, opt_state = opt.update(g, opt_state, p)
    return optax.apply_updates(p, u), opt_state

  mb = 512
  steps = f_train.shape[0] // mb
  for ep in range(_EPOCHS.value):
    perm = jax.random.permutation(jax.random.fold_in(k1, ep), f_train.shape[0])
    for s in range(steps):
      idx = perm[s * mb:(s + 1) * mb]
      p, opt_state = step(p, opt_state, f_train[idx], y_train[idx])
  ev = jax.jit(loss)
  parts = [float(ev(p, f_held[i:i + 2048], y_held[i:i + 2048])) * len(y_held[i:i + 2048])
           for i in range(0, len(y_held), 2048)]
  return sum(parts) / len(y_held)


def ngram_baselines(y_prev_train, y_train, y_prev_held, y_held, vocab) -> dict:
  uni = np.bincount(y_train, minlength=vocab) + 0.5
  uni = uni / uni.sum()
  out = {"unigram": float(-np.mean(np.log(uni[y_held])))}
  big = {}
  for a, b in zip(y_prev_train, y_train):
    big.setdefault(int(a), np.zeros(vocab))[b] += 1
  for k in (0.01, 0.1):
    nll = []
    for a, b in zip(y_prev_held, y_held):
      row = big.get(int(a))
      if row is None:
        nll.append(-np.log(uni[b]))
      else:
        nll.append(-np.log((row[b] + k * vocab * uni[b]) / (row.sum() + k * vocab)))
    out[f"bigram_k{k}"] = float(np.mean(nll))
  return out


def main(argv):
  del argv
  cache = Path(_CACHE.value)
  train_ids = np.load(cache / "train_ids.npy").astype(np.int32)
  held_ids = np.load(cache / "heldout_ids.npy").astype(np.int32)
  vocab = 4096
  results = []
  base = None
  for name in _VARIANTS.value:
    t0 = time.perf_counter()
    config = BrainConfig(scale=_SCALE.value, vocab_size=vocab, implementation=_IMPL.value,
                         **VARIANTS[name])
    key = jax.random.PRNGKey(0)
    fb_tr, fa_tr, cur_tr, nxt_tr, rates_A = collect(config, train_ids, _TRAIN.value, _BATCH.value, key)
    fb_he, fa_he, cur_he, nxt_he, _ = collect(config, held_ids, _HELD.value, _BATCH.value, key)
    t1 = time.perf_counter()
    if base is None:
      base = ngram_baselines(cur_tr, nxt_tr, cur_he, nxt_he, vocab)
      base["current_unigram"] = float(-np.mean(np.log(
          ((np.bincount(cur_tr, minlength=vocab) + 0.5) / (len(cur_tr) + 0.5 * vocab))[cur_he])))
      print(f"baselines (nats/token, same tokens): {json.dumps(base)}", flush=True)
    bias_next = readout.unigram_bias(nxt_tr, vocab)
    bias_cur = readout.unigram_bias(cur_tr, vocab)
    row = {"variant": name, "ticks": config.ticks_per_token,
           "rates_A": dict(zip(config.area_names, np.round(rates_A, 4).tolist()))}
    kk = jax.random.PRNGKey(1)
    for fname, ftr, fhe in (("broca", fb_tr, fb_he), ("all", fa_tr, fa_he)):
      row[f"{fname}_next"] = fit_readout(ftr, jnp.asarray(nxt_tr), fhe, jnp.asarray(nxt_he), vocab,
                                         bias_next, kk)
      row[f"{fname}_current"] = fit_readout(ftr, jnp.asarray(cur_tr), fhe, jnp.asarray(cur_he), vocab,
                                            bias_cur, kk)
    row["collect_s"] = round(t1 - t0, 1)
    row["fit_s"] = round(time.perf_counter() - t1, 1)
    print(json.dumps(row), flush=True)
    results.append(row)
  if _OUT.value:
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps({"baselines": base, "rows": results,
                                            "train_tokens": _TRAIN.value,
                                            "heldout_tokens": _HELD.value}, indent=1))


if __name__ == "__main__":
  flags.mark_flag_as_required("cache")
  app.run(main)
