"""Whole-brain benchmark: µs per tick and tokens/s, XLA vs Pallas, learning on and off.

    python -m experiments.bench --batches=1,16,64,256 --impls=xla,pallas --learning=off,on
    python -m experiments.bench --batches=1 --impls=pallas --learning=off --tick_unroll=0,1 \
        --events_variant=tiles,rows,atomic      # B = 1: tick-loop unrolling, event kernels

Every figure is also given as % of its HBM floor, measured in the same run: the floor
of one tick is (weight bytes + state bytes read and written) / copy bandwidth, with the
copy bandwidth of a 1 GiB elementwise copy timed here with the kernel benchmark's
method (CUPTI device time, bytes read + written).
Prints a table and writes JSON lines to --out. Each row also gives `tick_unroll` (the
flag's value), `scan_unroll` (the unroll it means at that B, `BrainConfig.scan_unroll`),
`events_variant` (None where it is not used: XLA, or B > 1) and `program_bytes` (the
compiled step's arguments + outputs + temporaries, from XLA's memory analysis: a
per-point figure, unlike `peak_bytes`, the process-wide peak since start).
With --find_max_batch, B doubles from --max_batch_start (learning on) until a point fails
or passes --max_batch_limit; each fitting B gets a row (`find_max_batch`: true).
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from neurogen_jax import brain, learning
from neurogen_jax.config import BrainConfig
from neurogen_jax.pallas import neuron_update, propagate
from neurogen_jax.pallas import plasticity as pallas_plasticity
from neurogen_jax.plasticity import PlasticityConfig
from experiments.timing import copy_bandwidth, device_op_times, hlo_op_sources

FLAGS = flags.FLAGS
flags.DEFINE_string("batches", "1,16,64,256", "comma-separated stream counts B")
flags.DEFINE_string("impls", "xla,pallas", "implementations to time")
flags.DEFINE_string("learning", "off,on", "off: forward cognitive steps; on: train_chunk with all plasticity")
flags.DEFINE_float("scale", 1.0, "brain scale (1 = 79,872 neurons)")
flags.DEFINE_integer("tokens", 8, "tokens per timed call (scanned inside one jit)")
flags.DEFINE_integer("repeats", 5, "timed calls per point (median reported)")
flags.DEFINE_string("out", "", "JSON-lines output file")
flags.DEFINE_string("tick_unroll", "0", "comma-separated BrainConfig.tick_unroll values (0 = auto: "
                    "all ticks at B = 1, else 1)")
flags.DEFINE_string("events_variant", "tiles", "comma-separated Pallas event kernels for B = 1 "
                    "(tiles, rows, atomic); ignored by xla and at B > 1")
flags.DEFINE_string("inference_dtype", "float32", "comma-separated dtypes of the dense token "
                    "weights (w_in, embed, w_out) on forward points (`brain.inference_params`); "
                    "learning points train the float32 originals")
flags.DEFINE_enum("state_dtype", "float32", ["float32", "bfloat16"], "BrainConfig.state_dtype: "
                  "storage of the neuron state v, i, a, tr (the floor counts its bytes)")
flags.DEFINE_enum("spike_dtype", "auto", ["auto", "int8"], "BrainConfig.spike_dtype: the "
                  "propagated signed spikes (auto = the weights' dtype)")
flags.DEFINE_enum("current_dtype", "float32", ["float32", "bfloat16"],
                  "BrainConfig.current_dtype: the propagated current")
flags.DEFINE_enum("readout_matmul_dtype", "float32", ["float32", "bfloat16"],
                  "BrainConfig.readout_matmul_dtype: operands of the readout's and the input "
                  "projection's dense dots")
flags.DEFINE_string("readout_also", "", "comma-separated BrainConfig.readout_also: further read "
                    "areas (the best learning recipe reads thalamus,wernicke,hippocampus,pfc,"
                    "basal_ganglia besides broca)")
flags.DEFINE_string("fuse_propagation", "false", "comma-separated BrainConfig.fuse_propagation "
                    "values (true: the propagation inside the neuron tick's kernel; Pallas, B a "
                    "multiple of 16)")
flags.DEFINE_string("propagation_backend", "auto", "comma-separated BrainConfig."
                    "propagation_backend values (auto, triton, mosaic_gpu: the Pallas dense "
                    "propagation's lowering at B > 1; auto = mosaic_gpu on Hopper from 128 "
                    "streams); each row gives the lowering that ran")
flags.DEFINE_string("synapse_backend", "auto", "comma-separated BrainConfig.synapse_backend "
                    "values (auto, triton, mosaic_gpu: the lowering of the per-token synapse "
                    "update; auto = mosaic_gpu on Hopper for 128-512 streams); each row gives "
                    "the lowering that ran")
flags.DEFINE_bool("find_max_batch", False, "double B (learning on, first of --impls) until it no "
                  "longer fits")
flags.DEFINE_integer("max_batch_start", 256, "first B of --find_max_batch")
flags.DEFINE_integer("max_batch_limit", 16384, "largest B that --find_max_batch tries")
flags.DEFINE_string("profile_dir", "", "if set, each point also runs once under jax.profiler and "
                    "writes DIR/<point>/ops.json (device time per HLO op with its source line, "
                    "largest first) and the compiled HLO; the table prints the top ops")

def _bool(text: str) -> bool:
  if text.strip().lower() not in ("true", "false", "1", "0"):
    raise app.UsageError(f"--fuse_propagation takes true/false values, got {text!r}")
  return text.strip().lower() in ("true", "1")


def state_bytes_per_neuron(config: BrainConfig) -> int:
  """Per neuron and stream, each tick reads and writes v, i, a, tr (in `state_dtype`) and
  s (float32): 40 B with float32 state, 24 B with bfloat16."""
  return 2 * (4 * jnp.dtype(config.state_dtype).itemsize + 4)


def tick_floor_s(config: BrainConfig, batch: int, bandwidth: float) -> float:
  weight_bytes = config.num_synapses * jnp.dtype(config.weight_dtype).itemsize
  state_bytes = state_bytes_per_neuron(config) * config.num_neurons * batch
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


def bench_point(config: BrainConfig, batch: int, learn: bool, n_tokens: int, repeats: int,
                profile_dir: str = "", inference_dtype: str = "float32") -> dict:
  key = jax.random.PRNGKey(0)
  toks = jax.random.randint(key, (batch, n_tokens), 0, config.vocab_size)
  t_compile = time.perf_counter()
  if learn:
    pcfg = PlasticityConfig()
    opt = learning.make_optimizer(1e-3)
    ts = learning.init_train_state(config, pcfg, opt, key, batch)
    compiled = learning.train_chunk.lower(ts, toks, toks, config=config, pcfg=pcfg,
                                          optimizer=opt).compile()
    fn = lambda: compiled(ts, toks, toks)[1].loss
  else:
    params, state = brain.init(config, key, batch)
    if inference_dtype != "float32":
      params = brain.inference_params(params, jnp.dtype(inference_dtype))
    compiled = _forward.lower(params, state, toks, config).compile()
    fn = lambda: compiled(params, state, toks)[1]
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t_compile
  sec = _timed(fn, repeats)
  stats = jax.devices()[0].memory_stats() or {}
  ticks = n_tokens * config.ticks_per_token
  if profile_dir:
    name = (f"{config.implementation}_B{batch}_learn{int(learn)}_unroll{config.tick_unroll}"
            f"_w{inference_dtype}_state{config.state_dtype}_spikes{config.spike_dtype}"
            f"_current{config.current_dtype}_fuse{int(config.fuse_propagation)}"
            f"_readout{config.readout_matmul_dtype}_reads{len(config.readout_areas)}"
            f"_prop{_propagation_backend(config, batch)}"
            f"_syn{_synapse_backend(config, batch) if learn else None}")
    profile_point(fn, compiled.as_text(), os.path.join(profile_dir, name), ticks)
  return {"batch": batch, "learning": learn, "tokens_per_call": n_tokens,
          "implementation": config.implementation,
          "tick_unroll": config.tick_unroll,
          "scan_unroll": config.scan_unroll(batch, jax.default_backend()),
          "events_variant": _events_variant(config, batch),
          "propagation_backend": _propagation_backend(config, batch),
          "synapse_backend": _synapse_backend(config, batch) if learn else None,
          "inference_dtype": None if learn else inference_dtype,
          "us_per_tick": sec / ticks * 1e6, "tokens_per_s": batch * n_tokens / sec,
          "compile_s": compile_s, "peak_bytes": stats.get("peak_bytes_in_use"),
          "program_bytes": _program_bytes(compiled)}


def profile_point(fn, hlo_text: str, point_dir: str, ticks: int, top: int = 25) -> list[dict]:
  """Runs fn once under jax.profiler; writes ops.json (device µs per tick of each HLO op,
  with its source from the HLO metadata) and hlo.txt into point_dir; prints the top ops."""
  os.makedirs(point_dir, exist_ok=True)
  with open(os.path.join(point_dir, "hlo.txt"), "w") as f:
    f.write(hlo_text)
  with jax.profiler.trace(os.path.join(point_dir, "trace")):
    jax.block_until_ready(fn())
  sources = hlo_op_sources(hlo_text)
  rows = device_op_times(os.path.join(point_dir, "trace"))
  total = sum(r["us"] for r in rows) or 1.0
  for r in rows:
    r.update(us_per_tick=r["us"] / ticks, share=r["us"] / total, source=sources.get(r["op"], "?"))
  with open(os.path.join(point_dir, "ops.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(f"  profile {point_dir}: {total / ticks:.1f} us/tick of device time over {len(rows)} ops",
        flush=True)
  for r in rows[:top]:
    print(f"    {100 * r['share']:5.1f}% {r['us_per_tick']:8.2f} us/tick {r['calls']:6d} calls "
          f"{r['op'][:40]:40s} {r['source'][:110]}", flush=True)
  return rows


def _propagation_backend(config: BrainConfig, batch: int) -> str | None:
  """The dense Pallas propagation's lowering at this point (None: XLA, or B = 1's events)."""
  if config.implementation != "pallas" or batch == 1:
    return None
  if config.propagation_backend != "auto":
    return config.propagation_backend
  tiles = jax.ShapeDtypeStruct((1, 1, config.tile, config.tile), config.weight_dtype)
  return propagate.choose_backend(batch, tiles)


def _synapse_backend(config: BrainConfig, batch: int) -> str | None:
  """The Pallas synapse update's lowering at this learning point (None: XLA)."""
  if config.implementation != "pallas":
    return None
  if config.synapse_backend != "auto":
    return config.synapse_backend
  factor = jax.ShapeDtypeStruct((batch, config.num_neurons), PlasticityConfig().factor_dtype)
  return pallas_plasticity.choose_synapse_backend([(factor, factor, None)], config.tile)


def _events_variant(config: BrainConfig, batch: int) -> str | None:
  """The event kernel a point uses, or None (XLA, or B > 1: dense propagation)."""
  return config.events_variant if config.implementation == "pallas" and batch == 1 else None


def _program_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries of the compiled step (XLA's memory analysis)."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # not every backend reports it
    return None


def _report(r: dict, out) -> None:
  gib = lambda b: f"{b / 2**30:.1f}" if b else "-"
  floor = (f"floor {r['floor_us_per_tick']:7.1f} us ({r['pct_of_floor']:5.1f}%)  "
           if "floor_us_per_tick" in r else "")
  variant = r["events_variant"] or "-"
  weights = {"bfloat16": "bf16", "float32": "f32"}.get(r.get("inference_dtype"),
                                                        r.get("inference_dtype") or "-")
  print(f"  {r['implementation']:6s} B={r['batch']:5d} learn={'on ' if r['learning'] else 'off'} "
        f"unroll={r['scan_unroll']:2d} events={variant:6s} w={weights:4s} "
        f"fuse={int(bool(r.get('fuse_propagation')))} "
        f"prop={r.get('propagation_backend') or '-'} "
        f"syn={r.get('synapse_backend') or '-'} "
        f"{r['us_per_tick']:9.1f} us/tick "
        f"{r['tokens_per_s']:10.1f} tok/s  {floor}compile {r['compile_s']:.0f}s  "
        f"program {gib(r['program_bytes'])} GiB  peak {gib(r['peak_bytes'])} GiB", flush=True)
  if out:
    out.write(json.dumps(r) + "\n")
    out.flush()


def _dtypes() -> dict:
  """The BrainConfig dtype fields the flags set."""
  return dict(state_dtype=FLAGS.state_dtype, spike_dtype=FLAGS.spike_dtype,
              current_dtype=FLAGS.current_dtype, readout_matmul_dtype=FLAGS.readout_matmul_dtype,
              readout_also=tuple(a for a in FLAGS.readout_also.split(",") if a))


def _with_floor(r: dict, config: BrainConfig, bandwidth: float) -> dict:
  """Adds the point's HBM floor and % of it (and the run's device facts) to row `r`."""
  floor_us = tick_floor_s(config, r["batch"], bandwidth) * 1e6
  r.update(floor_us_per_tick=floor_us, pct_of_floor=100 * floor_us / r["us_per_tick"],
           device=jax.devices()[0].device_kind, copy_bw_TBps=bandwidth / 1e12,
           date=time.strftime("%Y-%m-%d"), bytes_per_neuron=state_bytes_per_neuron(config),
           state_dtype=config.state_dtype, spike_dtype=config.spike_dtype,
           current_dtype=config.current_dtype, fuse_propagation=config.fuse_propagation,
           readout_matmul_dtype=config.readout_matmul_dtype,
           readout_areas=list(config.readout_areas))
  return r


def find_max_batch(config: BrainConfig, start: int, limit: int, out, bandwidth: float) -> int | None:
  """Doubles B (learning on, 2 tokens, 1 repeat) from `start` until a point fails or B
  passes `limit`; reports each fitting B; returns the largest (None if none fits)."""
  b, fits = start, None
  while b <= limit:
    try:
      r = bench_point(config, b, True, 2, 1)
    except Exception as e:  # out of memory (or any failure) ends the search, not the run
      print(f"  B={b} does not fit: {type(e).__name__}: {str(e)[:200]}", flush=True)
      break
    finally:
      gc.collect()  # drop the failed point's buffers before the next one
    r["find_max_batch"] = True
    _report(_with_floor(r, config, bandwidth), out)
    fits = b
    b *= 2
  return fits


def main(argv):
  del argv
  dev = jax.devices()[0]
  bw = copy_bandwidth(iters=30)
  print(f"device: {dev.device_kind} ({dev.platform}); copy bandwidth {bw / 1e12:.2f} TB/s; "
        f"date {time.strftime('%Y-%m-%d')}", flush=True)
  out = open(FLAGS.out, "a") if FLAGS.out else None
  batches = [int(b) for b in FLAGS.batches.split(",")]
  unrolls = [int(u) for u in FLAGS.tick_unroll.split(",")]
  variants = FLAGS.events_variant.split(",")
  dtypes = FLAGS.inference_dtype.split(",")
  fuses = [_bool(f) for f in FLAGS.fuse_propagation.split(",")]
  backends = FLAGS.propagation_backend.split(",")
  synapse_backends = FLAGS.synapse_backend.split(",")
  for impl in FLAGS.impls.split(","):
    base = BrainConfig(scale=FLAGS.scale, implementation=impl, **_dtypes())
    print(f"brain: {base.num_neurons} neurons, {base.num_synapses / 1e6:.1f}M synapses, "
          f"{base.ticks_per_token} ticks/token; state {base.state_dtype}, spikes "
          f"{base.spike_dtype}, current {base.current_dtype}, readout dots "
          f"{base.readout_matmul_dtype}, read areas {','.join(base.readout_areas)}", flush=True)
    for learn in [s == "on" for s in FLAGS.learning.split(",")]:
      for b in batches:
        # (scan unroll, event kernel, dtype, fused, propagation and synapse lowerings) measured
        done = set()
        for unroll, variant, dtype, fuse, backend, syn in itertools.product(
            unrolls, variants, ["float32"] if learn else dtypes, fuses, backends,
            synapse_backends if learn else ["auto"]):
          config = base.replace(tick_unroll=unroll, events_variant=variant,
                                fuse_propagation=fuse, propagation_backend=backend,
                                synapse_backend=syn)
          fused = fuse and impl == "pallas" and neuron_update.fused_block_b(b) > 0
          key = (config.scan_unroll(b, jax.default_backend()), _events_variant(config, b),
                 dtype, fused, None if fused else _propagation_backend(config, b),
                 _synapse_backend(config, b) if learn else None)
          if key in done:  # the same program as an earlier row (e.g. auto = 1 at B > 1)
            continue
          done.add(key)
          try:
            r = bench_point(config, b, learn, FLAGS.tokens, FLAGS.repeats, FLAGS.profile_dir,
                            dtype)
          except Exception as e:  # a failed point is reported, the others still run
            print(f"  {impl} B={b} learning={learn} tick_unroll={unroll} events={variant}: "
                  f"FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            gc.collect()
            continue
          _report(_with_floor(r, config, bw), out)
  if FLAGS.find_max_batch:
    config = BrainConfig(scale=FLAGS.scale, implementation=FLAGS.impls.split(",")[0],
                         **_dtypes())
    fits = find_max_batch(config, FLAGS.max_batch_start, FLAGS.max_batch_limit, out, bw)
    print(f"largest B that fits with learning on ({config.implementation}, powers of 2 from "
          f"{FLAGS.max_batch_start} up to {FLAGS.max_batch_limit}): {fits}", flush=True)


if __name__ == "__main__":
  app.run(main)
