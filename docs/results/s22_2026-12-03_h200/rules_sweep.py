"""Session 22 record: the per-synapse rules pass alone (dW given in float32, no factor
groups), as `synapse_update(backend="mosaic_gpu")` runs it after the Mosaic GPU GEMMs.

  python docs/results/s22_2026-12-03_h200/rules_sweep.py > rules_sweep.jsonl
  python docs/results/s22_2026-12-03_h200/rules_sweep.py 8   # CPU smoke: R = 8, interpret

Times (wall clock over chained, donated calls) the Triton kernel's rows per program and
warps, with and without the replay (direct) group, and XLA's reference, at full size."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.getcwd())

from experiments.timing import copy_bandwidth, time_us
from neurogen_jax.pallas import plasticity

R = int(sys.argv[1]) if len(sys.argv) > 1 else 624
K, T = 8, 128
INTERPRET = jax.devices()[0].platform != "gpu"


def main():
  rng = np.random.default_rng(0)
  n = R * T
  shape = (R, K, T, T)
  col = jnp.asarray(rng.integers(0, R, (R, K)), jnp.int32)
  w = jnp.asarray(rng.uniform(0.05, 1.0, shape), jnp.bfloat16)
  early = jnp.asarray(1e-3 * rng.standard_normal(shape), jnp.bfloat16)
  tag = jnp.asarray(rng.uniform(size=shape) < 0.1, jnp.bfloat16)
  dw = jnp.asarray(1e-3 * rng.standard_normal(shape), jnp.float32)
  exc = jnp.asarray(rng.uniform(size=n) < 0.8, jnp.float32)
  f = jnp.asarray(1.0 + 1e-3 * rng.standard_normal((2, n)), jnp.float32)
  factor = lambda rows, s=1.0: jnp.asarray(s * rng.standard_normal((rows, n)), jnp.bfloat16)
  direct = ((factor(8), factor(8, 1e-3), jnp.full((R, K), -1e-3, jnp.float32)),)
  rules = plasticity.SynapseRules(w_max=1.0)
  scalars = (jnp.float32(2e-3), jnp.float32(0.5), jnp.int32(7))
  bw = copy_bandwidth(20)
  floor_us = (w.size * 2 * 3 * 2 + dw.size * 4) / bw * 1e6

  def call(update, with_direct, **kw):
    def fn(state, dw):
      w_, e_, g_ = state
      out = update(w_, e_, g_, col, exc, f, (), direct if with_direct else (), dw, *scalars,
                   rules, **kw)
      return out[:3]
    return jax.jit(fn, donate_argnums=0)

  state = lambda: (jnp.copy(w), jnp.copy(early), jnp.copy(tag))
  variants = [("xla", True, plasticity.synapse_update_reference, {})]
  for with_direct in (True, False):
    for block_t in (128, 64, 32):
      for warps in (8, 4):
        variants.append((f"triton-rows{block_t}-w{warps}", with_direct, plasticity.synapse_update,
                         dict(block_t=block_t, num_warps=warps, backend="triton",
                              interpret=INTERPRET)))
  for name, with_direct, update, kw in variants:
    try:
      us = time_us(call(update, with_direct, **kw), state(), dw, iters=20, chain=True)
    except Exception as e:  # pylint: disable=broad-except
      print(json.dumps({"impl": name, "direct": with_direct, "error": repr(e)[:300]}), flush=True)
      continue
    print(json.dumps({"impl": name, "direct": with_direct, "B_direct": 8, "us": round(us, 1),
                      "floor_us": round(floor_us, 1), "pct_of_floor": round(100 * floor_us / us, 1),
                      "device": jax.devices()[0].device_kind, "copy_TBps": round(bw / 1e12, 2)}),
          flush=True)


if __name__ == "__main__":
  main()
