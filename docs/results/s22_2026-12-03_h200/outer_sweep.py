"""Session 22 record: `plasticity.grouped_outer` (the Mosaic GPU dW kernel) alone, and the
whole synapse update by backend, at full size (R = 624, K = 8, T = 128; the brain's column
layout: `connectivity.build_connectivity` of the default BrainConfig).

  python docs/results/s22_2026-12-03_h200/outer_sweep.py 256,2048 > outer_sweep.jsonl

Factor groups as training forms them: e-prop (B rows, scaled per tile), LTP and LTD (B rows
each, unscaled); replay as one direct group of 8 rows. CUPTI device time for the kernel
alone; wall clock over chained, donated calls for the synapse update.

The two result files ran earlier revisions of this script against earlier kernels, with a
`band` argument (since removed) that walked the tiles in bands of P post blocks sorted by
pre block (band 0: post block by post block, the order kept):
outer_sweep_v1.jsonl: a wgmma wait and a scaled add every step, the rules after it in the
Triton kernel (128 rows, 8 warps); outer_sweep.jsonl: two accumulators held over the tile,
the rules in XLA (`synapse_update_reference`). The committed backend runs the rules in the
Triton kernel with 32 rows and 4 warps (rules_sweep.jsonl; step_lean_v2.jsonl)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.getcwd())

from experiments.timing import copy_bandwidth, time_us  # noqa: E402
from neurogen_jax import connectivity  # noqa: E402
from neurogen_jax.config import BrainConfig  # noqa: E402
from neurogen_jax.pallas import plasticity  # noqa: E402


def main():
  batches = [int(b) for b in (sys.argv[1] if len(sys.argv) > 1 else "256,2048").split(",")]
  config = BrainConfig()
  conn = connectivity.build_connectivity(config, jax.random.PRNGKey(0))
  col = conn.col_RxK
  r, k = col.shape
  t = config.tile
  n = r * t
  rng = np.random.default_rng(0)
  shape = (r, k, t, t)
  w = jnp.asarray(rng.uniform(0.05, 1.0, shape), jnp.bfloat16)
  early = jnp.asarray(1e-3 * rng.standard_normal(shape), jnp.bfloat16)
  tag = jnp.asarray(rng.uniform(size=shape) < 0.1, jnp.bfloat16)
  exc = jnp.asarray(rng.uniform(size=n) < 0.8, jnp.float32)
  f = jnp.asarray(1.0 + 1e-3 * rng.standard_normal((2, n)), jnp.float32)
  rules = plasticity.SynapseRules(w_max=1.0)
  scalars = (jnp.float32(2e-3), jnp.float32(0.5), jnp.int32(7))
  bw = copy_bandwidth(20)
  dev = jax.devices()[0].device_kind
  for b in batches:
    factor = lambda rows, s=1.0: jnp.asarray(s * rng.standard_normal((rows, n)), jnp.bfloat16)
    groups = ((factor(b), factor(b, 1e-3), jnp.full((r, k), -1e-3, jnp.float32)),
              (factor(b), factor(b, 1e-4 / b), None), (factor(b), factor(b, 1e-4 / b), None))
    direct = ((factor(8), factor(8, 1e-3), jnp.full((r, k), -1e-3, jnp.float32)),)
    flops = 2 * w.size * 3 * b
    fn = jax.jit(lambda gs: plasticity.grouped_outer(gs, col, t))
    us = time_us(fn, groups, iters=10)
    print(json.dumps({"kernel": "grouped_outer", "B": b, "us": round(us, 1),
                      "tflops": round(flops / us / 1e6, 1), "device": dev,
                      "copy_TBps": round(bw / 1e12, 2)}), flush=True)

    def call(**kw):
      def fn(state, groups, direct):
        out = plasticity.synapse_update(*state, col, exc, f, groups, direct, None, *scalars,
                                        rules, **kw)
        return out[:3]
      return jax.jit(fn, donate_argnums=0)

    state = lambda: (jnp.copy(w), jnp.copy(early), jnp.copy(tag))
    for name, kw in (("triton", dict(backend="triton")),
                     ("triton-rows64", dict(backend="triton", block_t=64)),
                     ("mosaic_gpu", dict(backend="mosaic_gpu"))):
      try:
        us = time_us(call(**kw), state(), groups, direct, iters=10, chain=True)
      except Exception as e:  # pylint: disable=broad-except
        print(json.dumps({"kernel": "synapse_update", "B": b, "impl": name, "error": repr(e)[:300]}))
        continue
      print(json.dumps({"kernel": "synapse_update", "B": b, "impl": name, "us": round(us, 1),
                        "device": dev}), flush=True)


if __name__ == "__main__":
  main()
