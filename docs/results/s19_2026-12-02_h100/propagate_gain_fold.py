"""Propagation variants: gain folded into the spike operand so the tile products chain
into one accumulator (acc = dot(s*g, w, acc)), against the current kernel."""
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from neurogen_jax.pallas import propagate as P
from experiments.timing import time_us

def folded_kernel(col_ref, gain_ref, spk_ref, w_ref, out_ref, *, block_b, mode):
  b, r = pl.program_id(0), pl.program_id(1)
  k_slots, tile, _ = w_ref.shape
  rows = pl.ds(pl.multiple_of(b * block_b, block_b), block_b)
  def body(k, acc):
    start = pl.multiple_of(col_ref[r, k] * tile, tile)
    spk = spk_ref[rows, pl.ds(start, tile)].astype(w_ref.dtype)
    if mode == "fold":
      spk = spk * gain_ref[r, k].astype(w_ref.dtype)
    return acc + jnp.dot(spk, w_ref[k], preferred_element_type=jnp.float32)
  out_ref[...] = jax.lax.fori_loop(0, k_slots, body, jnp.zeros((block_b, tile), jnp.float32)).astype(out_ref.dtype)

def folded(spk, w, col, gain, block_b, warps, stages, mode, out_dtype=jnp.bfloat16):
  b, n = spk.shape
  r, k_slots, t, _ = w.shape
  full = pl.BlockSpec()
  return pl.pallas_call(
      functools.partial(folded_kernel, block_b=block_b, mode=mode),
      grid=(b // block_b, r),
      in_specs=[full, full, full, pl.BlockSpec((None, k_slots, t, t), lambda i, j: (j, 0, 0, 0))],
      out_specs=pl.BlockSpec((block_b, t), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((b, n), out_dtype),
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
  )(col, gain, spk.astype(w.dtype), w)

def main():
  rng = np.random.default_rng(0)
  R, K, T = 624, 8, 128
  col = jnp.asarray(rng.integers(0, R, (R, K)), jnp.int32)
  w = jnp.asarray(rng.random((R, K, T, T)) * 0.1, jnp.bfloat16)
  gain = jnp.asarray(rng.choice([0.5, 0.6015625, 0.69921875, 0.80078125, 1.0, -0.6015625], (R, K)), jnp.float32)
  out = []
  for B in [int(x) for x in sys.argv[1].split(",")]:
    spk = jnp.asarray((rng.random((B, R * T)) < 0.03) * rng.choice([-1, 1], (B, R * T)), jnp.bfloat16)
    ref = P.propagate_reference(spk, w, col, gain)
    flop = 2 * B * R * K * T * T
    def rec(name, fn):
      try:
        f = jax.jit(fn)
        got = f(spk).astype(jnp.float32)
        err = float(jnp.max(jnp.abs(got - ref)) / (jnp.max(jnp.abs(ref)) + 1e-9))
        us = time_us(f, spk, iters=30)
        row = dict(B=B, variant=name, us=round(us, 1), tflops=round(flop / us / 1e6, 1), rel_err=err)
      except Exception as e:
        row = dict(B=B, variant=name, error=f"{type(e).__name__}: {str(e)[:200]}")
      print(json.dumps(row), flush=True); out.append(row)
    rec("current", lambda s: P.propagate(s, w, col, gain, out_dtype=jnp.bfloat16))
    for bb, warps, stages in [(64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 8, 3), (128, 8, 2), (128, 4, 3)]:
      if B % bb: continue
      for mode in ["fold", "nogain"]:
        rec(f"{mode}_b{bb}_w{warps}_s{stages}", lambda s, bb=bb, warps=warps, stages=stages, mode=mode: folded(s, w, col, gain, bb, warps, stages, mode))
main()
