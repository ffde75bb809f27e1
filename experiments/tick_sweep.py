"""Block size and warps of the fused neuron tick (`pallas.neuron_update.alif_tick`).

  python -m experiments.tick_sweep --batch=256                   # full size, GPU
  python -m experiments.tick_sweep --batch=2 --neurons=1024 --variants=2048:4 --interpret
  python -m experiments.tick_sweep --batch=2048 --state_dtype=bfloat16 \
      --current_dtype=bfloat16 --collect=true                    # the lean tick, learning on

Runs T and 2T ticks in one scan (state carried, as in the brain, so the kernel updates
it in place) and reports (time(2T) - time(T)) / T per tick: the loop's entry copies
cancel. One JSON line per (collect, block elements, warps).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments.tick_inputs import ALIF, tick_rows
from experiments.timing import time_us
from neurogen_jax.pallas import neuron_update

_BATCH = flags.DEFINE_integer("batch", 256, "B: streams.")
_NEURONS = flags.DEFINE_integer("neurons", 79872, "N: neurons.")
_TICKS = flags.DEFINE_integer("ticks", 10, "T: ticks of the shorter scan.")
_VARIANTS = flags.DEFINE_list("variants", ["2048:4", "1024:4", "1024:2", "2048:8", "4096:8",
                                           "4096:4", "512:2", "512:4"],
                              "block elements (B x N per program):num_warps pairs.")
_STATE = flags.DEFINE_enum("state_dtype", "float32", ["float32", "bfloat16"], "v, i, a, tr.")
_CURRENT = flags.DEFINE_enum("current_dtype", "float32", ["float32", "bfloat16"], "prop.")
_SPIKES = flags.DEFINE_enum("spike_dtype", "bfloat16", ["bfloat16", "int8"], "q.")
_GROUPS = flags.DEFINE_integer("groups", 7, "Spike-count groups (the brain's six areas and "
                                "the basal ganglia's No-Go half: 7; 0 = no counts).")
_COLLECT = flags.DEFINE_list("collect", ["false", "true"], "Without / with the e-prop sums "
                              "(learning on collects).")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Interpret mode (a CPU smoke test).")



def tick_scan(ticks: int, collect: bool, drive, gate, vec, group, n_groups: int, signed_dtype,
              interpret: bool):
  """A jitted scan of `ticks` fused ticks over carried state, called as the brain calls it
  (s not written, spikes counted per group); prop is an input read every tick."""
  @jax.jit
  def run(v, i, a, tr, prop, read, post, spk):
    def body(c, _):
      v, i, a, tr, read, post, spk = c
      out = neuron_update.alif_tick(v, i, a, tr, prop, drive, gate, vec, read,
                                    post if collect else None, spk if collect else None,
                                    group, **ALIF, signed_dtype=signed_dtype,
                                    n_groups=n_groups, write_s=False, interpret=interpret)
      v, i, a, tr, _, q, read = out[:7]
      if collect:
        post, spk = out[7:9]
      return (v, i, a, tr, read, post, spk), q[0, 0].astype(jnp.float32)
    return jax.lax.scan(body, (v, i, a, tr, read, post, spk), None, length=ticks)
  return run


def main(argv):
  del argv
  b, n = _BATCH.value, _NEURONS.value
  keys = jax.random.split(jax.random.key(0), 7)
  v, i, a, tr, prop, drive, read = (0.5 * jax.random.normal(k, (b, n)) for k in keys)
  vec, gate, post, spk, group = tick_rows(b, n, _GROUPS.value)
  groups = _GROUPS.value
  state = tuple(z.astype(_STATE.value) for z in (v, i, a, tr))
  args = state + (prop.astype(_CURRENT.value), read, post, spk)
  defaults = (neuron_update._BLOCK_ELEMS, neuron_update._NUM_WARPS)
  try:
    for collect in [c.lower() == "true" for c in _COLLECT.value]:
      for variant in _VARIANTS.value:
        elems, warps = (int(x) for x in variant.split(":"))
        neuron_update._BLOCK_ELEMS, neuron_update._NUM_WARPS = elems, warps
        make = functools.partial(tick_scan, collect=collect, drive=drive, gate=gate, vec=vec,
                                 group=group, n_groups=groups,
                                 signed_dtype=jnp.dtype(_SPIKES.value),
                                 interpret=_INTERPRET.value)
        t = _TICKS.value
        short = time_us(make(t), *args, iters=10)
        long = time_us(make(2 * t), *args, iters=10)
        print(json.dumps(dict(batch=b, neurons=n, collect=collect, block_elems=elems,
                              num_warps=warps, us_per_tick=(long - short) / t,
                              state_dtype=_STATE.value, current_dtype=_CURRENT.value,
                              spike_dtype=_SPIKES.value, groups=groups,
                              device=jax.devices()[0].device_kind)), flush=True)
  finally:
    neuron_update._BLOCK_ELEMS, neuron_update._NUM_WARPS = defaults

if __name__ == "__main__":
  app.run(main)
