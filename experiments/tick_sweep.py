"""Block size and warps of the fused neuron tick (`pallas.neuron_update.alif_tick`).

  python -m experiments.tick_sweep --batch=256                   # full size, GPU
  python -m experiments.tick_sweep --batch=2 --neurons=1024 --variants=2048:4 --interpret
  python -m experiments.tick_sweep --batch=2048 --state_dtype=bfloat16 \
      --current_dtype=bfloat16 --collect=true                    # the lean tick, learning on
  python -m experiments.tick_sweep --batch=2048 --state_dtype=bfloat16 \
      --current_dtype=bfloat16 --collect=true --rows=brain \
      --variants=2048:4,2048:4:256 --switches=default,kernel_flags,onehot
                                   # block shapes (a third field caps block_n) and the
                                   # kernel's switches, on a sensation tick's rows

Runs T and 2T ticks in one scan (state carried, as in the brain, so the kernel updates
it in place) and reports (time(2T) - time(T)) / T per tick: the loop's entry copies
cancel. One JSON line per (switch, collect, variant), with the block shape it gave.
Under Nsight Compute (docs/KERNELS.md, session 16): `ncu --clock-control none -k
regex:alif_tick -s 3 -c 1 python -m experiments.tick_sweep ... --ticks=1`, with
XLA_FLAGS=--xla_gpu_enable_command_buffer=.
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
                              "block elements (B x N per program):num_warps[:largest block_n].")
_STATE = flags.DEFINE_enum("state_dtype", "float32", ["float32", "bfloat16"], "v, i, a, tr.")
_CURRENT = flags.DEFINE_enum("current_dtype", "float32", ["float32", "bfloat16"], "prop.")
_SPIKES = flags.DEFINE_enum("spike_dtype", "bfloat16", ["bfloat16", "int8"], "q.")
_GROUPS = flags.DEFINE_integer("groups", 7, "Spike-count groups (the brain's six areas and "
                                "the basal ganglia's No-Go half: 7; 0 = no counts).")
_COLLECT = flags.DEFINE_list("collect", ["false", "true"], "Without / with the e-prop sums "
                              "(learning on collects).")
_ROWS = flags.DEFINE_enum("rows", "all", ["all", "brain"], "all: every neuron driven and "
                          "read every tick (the most bytes); brain: a sensation tick's rows "
                          "(thalamus and Wernicke driven, nothing read).")
_SWITCHES = flags.DEFINE_list("switches", ["default"], "Kernel variants to time: default, "
                              "no_skip (every block loads drive and read sum), onehot (group "
                              "counts by one-hot sums in every block), kernel_flags (each "
                              "program reduces its rows for the block flags, as below "
                              "_FLAGS_MIN_B streams).")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Interpret mode (a CPU smoke test).")

_SWITCH_ATTRS = {"default": {}, "no_skip": {"_SKIP_IDLE_BLOCKS": False},
                 "onehot": {"_COUNT_BY_BLOCK": False},
                 "kernel_flags": {"_FLAGS_MIN_B": 1 << 30}}



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
  vec, gate, post, spk, group = tick_rows(b, n, _GROUPS.value, brain=_ROWS.value == "brain")
  groups = _GROUPS.value
  state = tuple(z.astype(_STATE.value) for z in (v, i, a, tr))
  args = state + (prop.astype(_CURRENT.value), read, post, spk)
  names = ("_BLOCK_ELEMS", "_NUM_WARPS", "_MAX_BLOCK_N", "_SKIP_IDLE_BLOCKS", "_COUNT_BY_BLOCK",
           "_FLAGS_MIN_B")
  defaults = {k: getattr(neuron_update, k) for k in names}
  try:
    for switch in _SWITCHES.value:
      for collect in [c.lower() == "true" for c in _COLLECT.value]:
        for variant in _VARIANTS.value:
          elems, warps, *max_n = (int(x) for x in variant.split(":"))
          setting = dict(defaults, _BLOCK_ELEMS=elems, _NUM_WARPS=warps,
                         _MAX_BLOCK_N=max_n[0] if max_n else defaults["_MAX_BLOCK_N"],
                         **_SWITCH_ATTRS[switch])
          for k, val in setting.items():
            setattr(neuron_update, k, val)
          make = functools.partial(tick_scan, collect=collect, drive=drive, gate=gate, vec=vec,
                                   group=group, n_groups=groups,
                                   signed_dtype=jnp.dtype(_SPIKES.value),
                                   interpret=_INTERPRET.value)
          t = _TICKS.value
          short = time_us(make(t), *args, iters=10)
          long = time_us(make(2 * t), *args, iters=10)
          _, block_b, block_n = neuron_update._layout(b, n)
          print(json.dumps(dict(batch=b, neurons=n, collect=collect, block_elems=elems,
                                num_warps=warps, block_b=block_b, block_n=block_n,
                                switch=switch, rows=_ROWS.value,
                                us_per_tick=(long - short) / t,
                                state_dtype=_STATE.value, current_dtype=_CURRENT.value,
                                spike_dtype=_SPIKES.value, groups=groups,
                                device=jax.devices()[0].device_kind)), flush=True)
  finally:
    for k, val in defaults.items():
      setattr(neuron_update, k, val)

if __name__ == "__main__":
  app.run(main)
