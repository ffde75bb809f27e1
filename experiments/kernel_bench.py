"""Micro-benchmark of the Pallas kernels against their XLA references, as % of the HBM floor.

  python -m experiments.kernel_bench --batches=1,16,64,256            # full size (R=624)
  python -m experiments.kernel_bench --blocks=16 --batches=1,4 --iters=3 --interpret  # CPU smoke

For each kernel and batch: the median device time (CUPTI, summed over the kernels of one
call; wall-clock of pipelined calls where CUPTI is missing), the floor = the fewest bytes
the op must move / the bandwidth of a large device copy measured in the same run, and
the error against the reference. Inputs are random (never zeros); each result is
checked before it is timed. The table is printed last; --out writes it as markdown too.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.tick_inputs import ALIF
from experiments.timing import copy_bandwidth, time_us
from neurogen_jax.pallas import events, neuron_update, plasticity, propagate

_BLOCKS = flags.DEFINE_integer("blocks", 624, "R: row blocks (624 x 128 = 79,872 neurons).")
_K = flags.DEFINE_integer("k", 8, "Tiles per post block (fan-in in tiles).")
_TILE = flags.DEFINE_integer("tile", 128, "T: neurons per block.")
_BATCHES = flags.DEFINE_list("batches", ["1", "16", "64", "256"], "Batch sizes B.")
_RATE = flags.DEFINE_float("rate", 0.02, "Spike probability per neuron and tick.")
_ITERS = flags.DEFINE_integer("iters", 50, "Timed calls per measurement.")
_KERNELS = flags.DEFINE_list("kernels", ["propagate", "events", "tile_outer", "tile_update",
                                         "synapse_update", "alif"],
                             "Which kernels to time.")
_B_GROUPS = flags.DEFINE_list("b_groups", [], "Also time the Triton propagation (bf16 current) "
                               "with these launch orders (`propagate.tile_order`: groups of G "
                               "batch tiles).")
_OUT = flags.DEFINE_string("out", "", "Also write the table (markdown) to this file.")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Run the Pallas kernels in interpret mode "
                               "(a CPU smoke test of this script; times mean nothing then).")



@dataclasses.dataclass
class Row:
  kernel: str
  batch: int
  impl: str
  us: float | None
  floor_us: float
  err: float | None
  note: str = ""
  speedup: float | None = None


def rel_err(out, ref) -> float:
  """max |out - ref| / max |ref| over all outputs (NaN if any output is not finite)."""
  worst = 0.0
  for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
    o = np.asarray(jnp.asarray(o, jnp.float32))
    r = np.asarray(jnp.asarray(r, jnp.float32))
    if not np.all(np.isfinite(o)):
      return float("nan")
    worst = max(worst, float(np.max(np.abs(o - r)) / max(np.max(np.abs(r)), 1e-30)))
  return worst


def measure(rows, kernel, batch, impl, fn, args, ref, floor_us, iters, note="", chain=False):
  """Check fn(*args) against ref, then time it; failures become a row, not a crash."""
  try:
    # chain donates args[0] (an array or a tuple of them)
    check_args = (jax.tree.map(jnp.copy, args[0]), *args[1:]) if chain else args
    err = rel_err(fn(*check_args), ref) if ref is not None else None
    us = time_us(fn, *args, iters=iters, chain=chain)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    rows.append(Row(kernel, batch, impl, None, floor_us, None, f"FAILED: {type(e).__name__}"))
    return
  rows.append(Row(kernel, batch, impl, us, floor_us, err, note))


def synapse_rows(rows, batch, col, w, gain, floor, iters, interp):
  """The whole per-token synapse pass as training runs it: e-prop (B rows, per-tile scale),
  the Hebbian family (LTP with dopamine, LTD: two unscaled groups of B rows), replay (8 direct rows), tagging and capture, scaling, clip,
  statistics, stochastic rounding; w, early and tag donated (updated in place)."""
  r, k, t, _ = w.shape
  n = r * t
  rng = np.random.default_rng(batch)
  factor = lambda rows_, scale=1.0: jnp.asarray(scale * rng.standard_normal((rows_, n)), jnp.bfloat16)
  groups = ((factor(batch), factor(batch, 1e-3), -1e-3 * gain),
            (factor(batch), factor(batch, 1e-4 / batch), None),
            (factor(batch), factor(batch, 1e-4 / batch), None))
  direct = ((factor(8), factor(8, 1e-3), -1e-3 * gain),)
  early = jnp.asarray(1e-3 * rng.standard_normal(w.shape), jnp.bfloat16)
  tag = jnp.asarray(rng.uniform(size=w.shape) < 0.1, jnp.bfloat16)
  exc = jnp.asarray(rng.uniform(size=n) < 0.8, jnp.float32)
  f = jnp.asarray(1.0 + 1e-3 * rng.standard_normal((2, n)), jnp.float32)
  rules = plasticity.SynapseRules(w_max=1.0)
  scalars = (jnp.float32(2e-3), jnp.float32(0.5), jnp.int32(7))
  stats0 = tuple(jnp.zeros((r, k, 1, t), jnp.float32) for _ in plasticity.SynapseStats._fields)
  factor_bytes = sum(2 * g[0].size * 2 for g in groups + direct)
  fl = floor(w.size * 2 * 3 * 2 + factor_bytes)  # w, early, tag (bf16) read and written
  flops = 2 * w.size * sum(g[0].shape[0] for g in groups + direct)
  note = f"{flops / 1e9:.0f} GFLOP; w/early/tag donated; wall clock"

  def call(update, **kw):
    def fn(state, groups, direct):
      w_, e_, g_, _ = state
      new_w, new_e, new_g, sums = update(w_, e_, g_, col, exc, f, groups, direct, None, *scalars,
                                         rules, **kw)
      return new_w, new_e, new_g, tuple(jnp.sum(x, axis=2, keepdims=True) for x in sums)
    return jax.jit(fn, donate_argnums=0)

  state = lambda: (jnp.copy(w), jnp.copy(early), jnp.copy(tag), stats0)
  ref_fn = call(plasticity.synapse_update_reference)
  ref = ref_fn(state(), groups, direct)
  measure(rows, "synapse_update", batch, "xla", ref_fn, (state(), groups, direct), ref, fl, iters,
          chain=True, note=note)
  # (rows 32 and 4 warps measured slower on an H200, docs/results/kernel_synapse_h200_2026-12-01.md)
  for block_t, warps in ((t, 8), (64, 8)):
    fn = call(plasticity.synapse_update, block_t=block_t, num_warps=warps, backend="triton",
              **interp)
    measure(rows, "synapse_update", batch, f"pallas-triton-rows{block_t}-w{warps}", fn,
            (state(), groups, direct), ref, fl, iters, chain=True, note=note)
  if not (propagate._is_hopper() or interp["interpret"]) or t not in plasticity.OUTER_TILES:
    return
  # Hopper: the groups' GEMMs by the warp-specialised Mosaic GPU kernel (dW in float32),
  # then the Triton kernel's rules on that dW; and the GEMM kernel alone.
  fn = call(plasticity.synapse_update, backend="mosaic_gpu", **interp)
  measure(rows, "synapse_update", batch, "pallas-mosaic_gpu+triton", fn,
          (state(), groups, direct), ref, fl, iters, chain=True, note=note)
  outer = jax.jit(lambda gs: plasticity.grouped_outer(gs, col, t, **interp))
  outer_ref = jax.jit(lambda gs: plasticity._grouped_outer(gs, col, t))
  gemm_flops = 2 * w.size * sum(g[0].shape[0] for g in groups)
  measure(rows, "grouped_outer", batch, "pallas-mosaic_gpu", outer, (groups,), outer_ref(groups),
          floor(w.size * 4 + factor_bytes), iters,
          note=f"{gemm_flops / 1e9:.0f} GFLOP; dW float32 written")


def main(argv):
  del argv
  r, k, t = _BLOCKS.value, _K.value, _TILE.value
  n, synapses, iters = r * t, r * k * t * t, _ITERS.value
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}); jax {jax.__version__}; R={r} K={k} T={t} "
        f"N={n} synapses={synapses / 1e6:.1f}M rate={_RATE.value}", flush=True)
  bw = copy_bandwidth(iters)
  print(f"copy bandwidth (read+write): {bw / 1e12:.2f} TB/s", flush=True)
  floor = lambda nbytes: 1e6 * nbytes / bw

  kc, kw, kg, ks, kp, kq = jax.random.split(jax.random.key(1), 6)
  col = jax.random.randint(kc, (r, k), 0, r)
  w = jax.random.uniform(kw, (r, k, t, t), minval=0.05, maxval=1.0).astype(jnp.bfloat16)
  gain = jax.random.uniform(kg, (r, k), minval=-1.0, maxval=1.0)
  w_bytes = synapses * 2
  rows: list[Row] = []
  xla = jax.jit
  interp = dict(interpret=_INTERPRET.value)

  for batch in [int(b) for b in _BATCHES.value]:
    spk_on = jax.random.uniform(jax.random.fold_in(ks, batch), (batch, n)) < _RATE.value
    spk = jnp.where(jax.random.uniform(kp, (batch, n)) < 0.8, 1.0, -1.0) * spk_on
    spk = spk.astype(jnp.bfloat16)
    print(f"B={batch}: {int(jnp.sum(spk_on))} spikes", flush=True)

    if "propagate" in _KERNELS.value:
      ref_fn = xla(propagate.propagate_reference)
      ref = ref_fn(spk, w, col, gain)
      fl = floor(w_bytes + batch * n * (2 + 4))
      measure(rows, "propagate", batch, "xla", ref_fn, (spk, w, col, gain), ref, fl, iters)
      variants = [("triton", None)]
      if batch >= 128:
        variants.append(("triton", 128))
      if batch >= 32:
        variants.append(("triton", 32))
      # Both lowerings: Mosaic GPU (wgmma) on Hopper only; any B, padded to 128 rows.
      lowerings = ["triton", "mosaic_gpu"] if propagate._is_hopper() or _INTERPRET.value else [
          "triton"]
      if "mosaic_gpu" in lowerings:
        variants.append(("mosaic_gpu", None))
      for backend, block_b in variants:
        fn = jax.jit(functools.partial(propagate.propagate, backend=backend, block_b=block_b, **interp))
        impl = f"pallas-{backend}" + (f"-b{block_b}" if block_b else "")
        measure(rows, "propagate", batch, impl, fn, (spk, w, col, gain), ref, fl, iters)
      for backend in lowerings:
        fn = jax.jit(functools.partial(propagate.propagate, out_dtype=jnp.bfloat16,
                                       backend=backend, **interp))
        measure(rows, "propagate", batch, f"pallas-{backend}-bf16out", fn, (spk, w, col, gain),
                ref, floor(w_bytes + batch * n * (2 + 2)), iters, note="bf16 current")
      for group in (int(g) for g in _B_GROUPS.value):
        fn = jax.jit(functools.partial(propagate.propagate, out_dtype=jnp.bfloat16,
                                       backend="triton", b_group=group, **interp))
        measure(rows, "propagate", batch, f"pallas-triton-bf16out-g{group}", fn,
                (spk, w, col, gain), ref, floor(w_bytes + batch * n * (2 + 2)), iters,
                note=f"bf16 current, groups of {group} batch tiles")
      fn = jax.jit(functools.partial(propagate.propagate, backend="triton", **interp))
      measure(rows, "propagate", batch, "pallas-triton-int8", fn, (spk.astype(jnp.int8), w, col, gain),
              ref, floor(w_bytes + batch * n * (1 + 4)), iters, note="int8 spikes")

    if "events" in _KERNELS.value and batch == 1:
      s_n = spk[0]
      ref = propagate.propagate_reference(s_n[None], w, col, gain)[0]
      fanout = events.build_fanout(col, r)
      per_block = np.bincount(np.asarray(col).ravel(), minlength=r)
      live = np.asarray(s_n != 0)
      rows_read = int(np.sum(per_block[np.nonzero(live)[0] // t]))
      fl = floor(rows_read * t * 2 + n * (2 + 4))
      max_events = int(2 * _RATE.value * n) + 64
      ev_xla = jax.jit(lambda s, ww, g: events.propagate_events(s, ww, col, g, fanout, max_events))
      measure(rows, "propagate_events", 1, "xla-events", ev_xla, (s_n, w, gain), ref, fl, iters,
              note=f"max_events={max_events}, {rows_read} rows")
      for variant in events.EVENTS_VARIANTS:  # "tiles" (the default) keeps its old row name
        ev_pallas = jax.jit(functools.partial(
            lambda s, ww, g, v: events.propagate_events_pallas(s, ww, col, g, variant=v, **interp),
            v=variant))
        impl = "pallas-events" + ("" if variant == "tiles" else f"-{variant}")
        measure(rows, "propagate_events", 1, impl, ev_pallas, (s_n, w, gain), ref, fl, iters,
                note=f"{rows_read} rows")

    if "tile_outer" in _KERNELS.value or "tile_update" in _KERNELS.value:
      pre = jax.random.uniform(jax.random.fold_in(kp, batch), (batch, n))
      post = jax.random.normal(jax.random.fold_in(kq, batch), (batch, n))
      traces = 2 * batch * n * 4
      pre16, post16 = pre.astype(jnp.bfloat16), post.astype(jnp.bfloat16)
    if "tile_outer" in _KERNELS.value:
      ref_fn = xla(functools.partial(plasticity.tile_outer_reference, tile=t))
      ref = ref_fn(pre, post, col)
      fl = floor(synapses * 4 + traces)
      measure(rows, "tile_outer", batch, "xla", ref_fn, (pre, post, col), ref, fl, iters)
      fn = jax.jit(functools.partial(plasticity.tile_outer, tile=t, **interp))
      measure(rows, "tile_outer", batch, "pallas-triton", fn, (pre, post, col), ref, fl, iters,
              note="f32 traces: TF32 dot")
      measure(rows, "tile_outer", batch, "pallas-triton-bf16", fn, (pre16, post16, col), ref,
              floor(synapses * 4 + traces // 2), iters, note="bf16 traces")
      del ref
    if "tile_update" in _KERNELS.value:
      scale = 1e-3
      ref = plasticity.tile_update_reference(w, pre, post, col, scale, 0.0, 1.0)
      fl = floor(2 * w_bytes + traces)
      # Donated w (updated in place), as in training; each call gets a fresh copy of w.
      ref_fn = jax.jit(lambda ww, a, b: plasticity.tile_update_reference(ww, a, b, col, scale,
                                                                         0.0, 1.0),
                       donate_argnums=0)
      measure(rows, "tile_update", batch, "xla", ref_fn, (jnp.copy(w), pre, post), ref, fl, iters,
              chain=True, note="w donated; wall clock")
      fn = jax.jit(lambda ww, a, b: plasticity.tile_update(ww, a, b, col, scale, 0.0, 1.0, **interp),
                   donate_argnums=0)
      measure(rows, "tile_update", batch, "pallas-triton", fn, (jnp.copy(w), pre, post), ref, fl,
              iters, chain=True, note="w donated; wall clock")
      measure(rows, "tile_update", batch, "pallas-triton-bf16", fn, (jnp.copy(w), pre16, post16), ref,
              floor(2 * w_bytes + traces // 2), iters, chain=True,
              note="bf16 traces; w donated; wall clock")
      del ref

    if "synapse_update" in _KERNELS.value:
      synapse_rows(rows, batch, col, w, gain, floor, iters, interp)

    if "alif" in _KERNELS.value:
      keys = jax.random.split(jax.random.fold_in(kq, 7 * batch), 6)
      shape = (batch, n)
      state = [jax.random.uniform(keys[0], shape, minval=-0.5, maxval=1.5),
               jax.random.normal(keys[1], shape), jax.random.uniform(keys[2], shape, maxval=0.5),
               jax.random.uniform(keys[3], shape), 0.5 * jax.random.normal(keys[4], shape)]
      theta = jax.random.uniform(keys[5], (n,), maxval=0.2)
      ref_fn = xla(functools.partial(neuron_update.alif_update_reference, **ALIF))
      ref = ref_fn(*state, theta)
      fl = floor(11 * batch * n * 4 + n * 4)
      measure(rows, "alif_update", batch, "xla", ref_fn, (*state, theta), ref, fl, iters)
      fn = jax.jit(functools.partial(neuron_update.alif_update, **ALIF, **interp))
      measure(rows, "alif_update", batch, "pallas-triton", fn, (*state, theta), ref, fl, iters)

  base = {(row.kernel, row.batch): row.us for row in rows if row.impl == "xla" and row.us}
  base[("propagate_events", 1)] = base.get(("propagate", 1))  # events vs the dense XLA path
  for row in rows:
    b = base.get((row.kernel, row.batch))
    row.speedup = b / row.us if (b and row.us) else None
  header = "| kernel | B | impl | µs | floor µs | % of floor | speedup vs XLA | rel err | note |"
  lines = [header, "|" + "---|" * 9]
  for row in rows:
    us = f"{row.us:.1f}" if row.us else "-"
    pct = f"{100 * row.floor_us / row.us:.0f}%" if row.us else "-"
    sp = f"{row.speedup:.2f}x" if row.speedup else "-"
    err = f"{row.err:.1e}" if row.err is not None else "-"
    lines.append(f"| {row.kernel} | {row.batch} | {row.impl} | {us} | {row.floor_us:.1f} | {pct} | "
                 f"{sp} | {err} | {row.note} |")
  table = "\n".join(lines)
  summary = (f"{dev.device_kind}, jax {jax.__version__}, R={r} K={k} T={t}, rate {_RATE.value}, "
             f"copy {bw / 1e12:.2f} TB/s")
  print("\n" + summary + "\n" + table, flush=True)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(summary + "\n\n" + table + "\n")


if __name__ == "__main__":
  app.run(main)
