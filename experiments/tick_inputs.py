"""Inputs of the neuron-tick micro-benchmarks (`tick_sweep`, `fused_sweep`, `kernel_bench`):
the ALIF constants of the default brain's time constants and the tick's per-neuron rows."""

from __future__ import annotations

import jax.numpy as jnp

# exp(-dt/tau) of the default time constants; the threshold model's parameters.
ALIF = dict(a_s=0.6065, a_m=0.7788, a_a=0.9753, a_t=0.9048, beta=0.5, threshold=1.0, width=0.5)


def tick_rows(b: int, n: int, groups: int, brain: bool = False):
  """The tick's other inputs -> (vec_6xN, gate_B, post, spikes, group_N): a fifth of the
  neurons gated, a quarter inhibitory, every neuron learning; every neuron driven and read
  (brain=False: the most bytes) or, brain=True, a sensation tick's rows: the first 18,432
  neurons (thalamus and Wernicke) driven and none read. The sums start at zero; `groups`
  equal neuron groups (None when 0), or with brain=True groups of whole 2,048-neuron
  ranges (the brain's areas span whole blocks)."""
  idx = jnp.arange(n)
  gain = jnp.where(idx < 18432, 1.0, 0.0) if brain else jnp.ones(n)
  read = jnp.zeros(n) if brain else jnp.full(n, 0.7)
  vec = jnp.stack([jnp.zeros(n), (idx % 5 == 0) * 1.0, gain, read,
                   jnp.ones(n), jnp.where(idx % 4 == 1, -1.0, 1.0)])
  post = spk = jnp.zeros((b, n), jnp.bfloat16)
  if not groups:
    group = None
  elif brain:
    ranges = -(-n // 2048)
    group = ((idx // 2048) * groups // ranges).astype(jnp.float32)
  else:
    group = (idx * groups // n).astype(jnp.float32)
  return vec, jnp.ones((b,)), post, spk, group
