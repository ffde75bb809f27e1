"""Whole-brain benchmark: µs per tick and tokens/s, XLA vs Pallas, learning on and off.

    python -m experiments.bench --batches=1,16,64,256 --impls=xla,pallas --learning=off,on

Every figure is also given as % of its HBM floor, measured in the same run: the floor
of one tick is (weight bytes + state bytes read and written) / copy bandwidth, with the
copy bandwidth of a 1 GiB elementwise copy timed here with the kernel benchmark's
method (CUPTI device time, bytes read + written).
Prints a table and writes JSON lines to --out.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from neurogen_jax import brain, learning
from neurogen_jax.config import BrainConfig
from neurogen_jax.plasticity import PlasticityConfig
from experiments.timing import copy_bandwidth

FLAGS = flags.FLAGS
flags.DEFINE_string("batches", "1,16,64,256", "comma-separated stream counts B")
flags.DEFINE_string("impls", "xla,pallas", "implementations to time")
flags.DEFINE_string("learning", "off,on", "off: forward cognitive steps; on: train_chunk with all plasticity")
flags.DEFINE_float("scale", 1.0, "brain scale (1 = 79,872 neurons)")
flags.DEFINE_integer("tokens", 8, "tokens per timed call (scanned inside one jit)")
flags.DEFINE_integer("repeats", 5, "timed calls per point (median reported)")
flags.DEFINE_string("out", "", "JSON-lines output file")
flags.DEFINE_bool("find_max_batch", False, "double B (learning on) until it no longer fits")

# Per neuron and stream, each tick reads and writes v, i, a, tr (f32) and s: 5 x 4 B each way.
STATE_BYTES_PER_NEURON = 2 * 5 * 4


def tick_floor_s(config: BrainConfig, batch: int, bandwidth: float) -> float:
  weight_bytes = config.num_synapses * jnp.dtype(config.weight_dtype).itemsize
  state_bytes = STATE_BYTES_PER_NEURON * config.num_neurons * batch
  return (weight_bytes + state_bytes) / bandwidth


@functools.partial(jax.jit, static_argnames=("config",))
def _forward(params, state, tokens_BxL, config):
  def body(st, tok):
    st, logits, _ = brain.cognitive_step(params, st, tok, config, collect=False)
    return st, jnp.max(logits)
  return jax.lax.scan(body, state, tokens_BxL.T)


def _timed(fn, repeats):
  out = fn()
  jax.block_until_ready(out)  # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_point(config: BrainConfig, batch: int, learn: bool, n_tokens: int, repeats: int) -> dict:
  key = jax.random.PRNGKey(0)
  toks = jax.random.randint(key, (batch, n_tokens), 0, config.vocab_size)
  t_compile = time.perf_counter()
  if learn:
    pcfg = PlasticityConfig()
    opt = learning.make_optimizer(1e-3)
    ts = learning.init_train_state(config, pcfg, opt, key, batch)
    fn = lambda: learning.train_chunk(ts, toks, toks, config=config, pcfg=pcfg, optimizer=opt)[1].loss
  else:
    params, state = brain.init(config, key, batch)
    fn = lambda: _forward(params, state, toks, config)[1]
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t_compile
  sec = _timed(fn, repeats)
  stats = jax.devices()[0].memory_stats() or {}
  ticks = n_tokens * config.ticks_per_token
  return {"batch": batch, "learning": learn, "implementation": config.implementation,
          "us_per_tick": sec / ticks * 1e6, "tokens_per_s": batch * n_tokens / sec,
          "compile_s": compile_s, "peak_bytes": stats.get("peak_bytes_in_use")}


def main(argv):
  del argv
  dev = jax.devices()[0]
  bw = copy_bandwidth(iters=30)
  print(f"device: {dev.device_kind} ({dev.platform}); copy bandwidth {bw / 1e12:.2f} TB/s; "
        f"date {time.strftime('%Y-%m-%d')}", flush=True)
  rows = []
  out = open(FLAGS.out, "a") if FLAGS.out else None
  batches = [int(b) for b in FLAGS.batches.split(",")]
  for impl in FLAGS.impls.split(","):
    config = BrainConfig(scale=FLAGS.scale, implementation=impl)
    print(f"brain: {config.num_neurons} neurons, {config.num_synapses / 1e6:.1f}M synapses, "
          f"{config.ticks_per_token} ticks/token", flush=True)
    for learn in [s == "on" for s in FLAGS.learning.split(",")]:
      for b in batches:
        try:
          r = bench_point(config, b, learn, FLAGS.tokens, FLAGS.repeats)
        except Exception as e:  # a failed point is reported, the others still run
          print(f"  {impl} B={b} learning={learn}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
          continue
        floor = tick_floor_s(config, b, bw)
        r.update(floor_us_per_tick=floor * 1e6, pct_of_floor=100 * floor * 1e6 / r["us_per_tick"],
                 device=dev.device_kind, copy_bw_TBps=bw / 1e12, date=time.strftime("%Y-%m-%d"),
                 bytes_per_neuron=STATE_BYTES_PER_NEURON)
        rows.append(r)
        print(f"  {impl:6s} B={b:4d} learn={'on ' if learn else 'off'} {r['us_per_tick']:9.1f} us/tick "
              f"{r['tokens_per_s']:10.1f} tok/s  floor {r['floor_us_per_tick']:7.1f} us "
              f"({r['pct_of_floor']:5.1f}%)  compile {r['compile_s']:.0f}s  "
              f"peak {(r['peak_bytes'] or 0) / 2**30:.1f} GiB", flush=True)
        if out:
          out.write(json.dumps(r) + "\n")
          out.flush()
  if FLAGS.find_max_batch:
    config = BrainConfig(scale=FLAGS.scale, implementation=FLAGS.impls.split(",")[0])
    b, fits = 256, None
    while b <= 8192:
      try:
        bench_point(config, b, True, 2, 1)
        fits = b
        b *= 2
      except Exception as e:
        print(f"  B={b} does not fit: {type(e).__name__}", flush=True)
        break
    print(f"largest B that fits with learning on (powers of 2 from 256): {fits}", flush=True)


if __name__ == "__main__":
  app.run(main)
