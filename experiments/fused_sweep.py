"""The propagation inside the neuron tick's kernel (`neuron_update.propagate_tick`) against
the two kernels it replaces (`propagate.propagate` then `alif_tick`), at full size.

  python -m experiments.fused_sweep --batch=2048 --state_dtype=bfloat16 \\
      --current_dtype=bfloat16                          # GPU: the lean tick, learning on
  python -m experiments.fused_sweep --batch=16 --blocks=4 --ticks=2 --variants=16:4 --interpret

Each variant runs T and 2T ticks in one scan with the state and the spikes q carried (as in
the brain: each tick propagates the previous tick's q) and reports (time(2T) - time(T)) / T
per tick; the loop's entry copies cancel. "pair" is the unfused propagation (batch tile
`propagate.batch_blocking`'s, current in --current_dtype) and tick; "BB:W" the fused
kernel with batch tile BB and W warps ("BB:W:S": S pipeline stages). One JSON line
per variant.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments.tick_inputs import ALIF, tick_rows
from experiments.timing import time_us
from neurogen_jax.pallas import neuron_update, propagate

_BATCH = flags.DEFINE_integer("batch", 256, "B: streams.")
_BLOCKS = flags.DEFINE_integer("blocks", 624, "R: row blocks (624 x 128 = 79,872 neurons).")
_K = flags.DEFINE_integer("k", 8, "Tiles per post block.")
_TILE = flags.DEFINE_integer("tile", 128, "T: neurons per block.")
_TICKS = flags.DEFINE_integer("ticks", 10, "Ticks of the shorter scan.")
_VARIANTS = flags.DEFINE_list("variants", ["pair", "64:4", "64:8", "32:4", "32:8", "16:4"],
                              "'pair' and fused batch tile:num_warps[:num_stages] variants.")
_STATE = flags.DEFINE_enum("state_dtype", "float32", ["float32", "bfloat16"], "v, i, a, tr.")
_CURRENT = flags.DEFINE_enum("current_dtype", "float32", ["float32", "bfloat16"],
                             "The pair's propagated current (the fused kernel keeps it in "
                             "float32 registers).")
_COLLECT = flags.DEFINE_bool("collect", True, "With the e-prop sums (learning on collects).")
_GROUPS = flags.DEFINE_integer("groups", 7, "Spike-count groups (the brain's 7; 0 = none).")
_RATE = flags.DEFINE_float("rate", 0.05, "Spike probability of the first tick's q.")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Interpret mode (a CPU smoke test).")



def tick_scan(ticks: int, variant: str, consts, interpret: bool):
  """A jitted scan of `ticks` ticks, each propagating the previous tick's q."""
  w, col, gain, drive, gate, vec, group = consts
  collect = _COLLECT.value
  kw = dict(**ALIF, n_groups=_GROUPS.value, write_s=False, interpret=interpret)

  @jax.jit
  def run(q, v, i, a, tr, read, post, spk):
    def body(c, _):
      q, v, i, a, tr, read, post, spk = c
      sums = (post, spk) if collect else (None, None)
      if variant == "pair":
        prop = propagate.propagate(q, w, col, gain, out_dtype=_CURRENT.value,
                                   interpret=interpret)
        out = neuron_update.alif_tick(v, i, a, tr, prop, drive, gate, vec, read, *sums, group,
                                      **kw)
      else:
        block_b, warps, *stages = (int(x) for x in variant.split(":"))
        out = neuron_update.propagate_tick(q, w, col, gain, v, i, a, tr, drive, gate, vec, read,
                                           *sums, group, **kw, block_b=block_b,
                                           num_warps=warps, num_stages=stages[0] if stages else 0)
      v, i, a, tr, _, q, read = out[:7]
      if collect:
        post, spk = out[7:9]
      return (q, v, i, a, tr, read, post, spk), out[-1][0, 0].astype(jnp.float32)
    return jax.lax.scan(body, (q, v, i, a, tr, read, post, spk), None, length=ticks)
  return run


def main(argv):
  del argv
  b, r, k, t = _BATCH.value, _BLOCKS.value, _K.value, _TILE.value
  n = r * t
  keys = jax.random.split(jax.random.key(0), 10)
  col = jax.random.randint(keys[0], (r, k), 0, r)
  w = (jax.random.uniform(keys[1], (r * k * t * t,), minval=0.0, maxval=0.05)
       .reshape(r, k, t, t).astype(jnp.bfloat16))
  gain = jax.random.uniform(keys[2], (r, k), minval=-1.0, maxval=1.0)
  v, i, a, tr, drive, read = (0.5 * jax.random.normal(kk, (b, n)) for kk in keys[3:9])
  q = (jax.random.uniform(keys[9], (b, n)) < _RATE.value).astype(jnp.bfloat16)
  groups = _GROUPS.value
  vec, gate, post, spk, group = tick_rows(b, n, groups)
  state = tuple(z.astype(_STATE.value) for z in (v, i, a, tr))
  args = (q,) + state + (read, post, spk)
  consts = (w, col, gain, drive, gate, vec, group)
  for variant in _VARIANTS.value:
    try:
      short = time_us(tick_scan(_TICKS.value, variant, consts, _INTERPRET.value), *args, iters=10)
      long = time_us(tick_scan(2 * _TICKS.value, variant, consts, _INTERPRET.value), *args,
                     iters=10)
      us = (long - short) / _TICKS.value
    except Exception as e:  # a variant that does not compile is reported, the rest still run
      print(json.dumps(dict(variant=variant, batch=b, error=f"{type(e).__name__}: "
                                                            f"{str(e)[:300]}")), flush=True)
      continue
    print(json.dumps(dict(variant=variant, batch=b, neurons=n, k=k, us_per_tick=us,
                          tokens_per_s_at_20_ticks=b / (20 * us * 1e-6),
                          state_dtype=_STATE.value, current_dtype=_CURRENT.value,
                          collect=_COLLECT.value, groups=groups,
                          device=jax.devices()[0].device_kind)),
          flush=True)


if __name__ == "__main__":
  app.run(main)
