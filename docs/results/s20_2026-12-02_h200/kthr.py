"""Propagation kernel alone, Triton vs Mosaic GPU (bf16 current), seed-like gains."""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from neurogen_jax.pallas import propagate as P
from experiments.timing import time_us
rng = np.random.default_rng(0)
R, K, T = 624, 8, 128
col = jnp.asarray(rng.integers(0, R, (R, K)), jnp.int32)
w = jnp.asarray(rng.random((R, K, T, T)) * 0.1, jnp.bfloat16)
gain = jnp.asarray(np.where(np.arange(K)[None] < 4, 0.8, -0.6) * np.ones((R, 1)), jnp.float32)
for B in [int(x) for x in sys.argv[1].split(",")]:
  spk = jnp.asarray((rng.random((B, R * T)) < 0.03) * rng.choice([-1, 1], (B, R * T)), jnp.bfloat16)
  ref = P.propagate_reference(spk, w, col, gain)
  for be in ["triton", "mosaic_gpu", "auto"]:
    f = jax.jit(lambda s, be=be: P.propagate(s, w, col, gain, backend=be, out_dtype=jnp.bfloat16))
    err = float(jnp.max(jnp.abs(f(spk).astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
    us = time_us(f, spk, iters=30)
    print(json.dumps(dict(B=B, backend=be, chosen=P.choose_backend(B, w), us=round(us, 1),
                          tflops=round(2 * B * R * K * T * T / us / 1e6, 1), rel_err=err)), flush=True)
