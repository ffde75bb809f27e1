"""Inputs of the neuron-tick micro-benchmarks (`tick_sweep`, `fused_sweep`, `kernel_bench`):
the ALIF constants of the default brain's time constants and the tick's per-neuron rows."""

from __future__ import annotations

import jax.numpy as jnp

# exp(-dt/tau) of the default time constants; the threshold model's parameters.
ALIF = dict(a_s=0.6065, a_m=0.7788, a_a=0.9753, a_t=0.9048, beta=0.5, threshold=1.0, width=0.5)


def tick_rows(b: int, n: int, groups: int):
  """The tick's other inputs, as in the brain -> (vec_6xN, gate_B, post, spikes, group_N):
  a fifth of the neurons gated, every neuron driven, read and learning, a quarter
  inhibitory; the sums start at zero; `groups` equal neuron groups (None when 0)."""
  idx = jnp.arange(n)
  vec = jnp.stack([jnp.zeros(n), (idx % 5 == 0) * 1.0, jnp.ones(n), jnp.full(n, 0.7),
                   jnp.ones(n), jnp.where(idx % 4 == 1, -1.0, 1.0)])
  post = spk = jnp.zeros((b, n), jnp.bfloat16)
  group = (idx * groups // n).astype(jnp.float32) if groups else None
  return vec, jnp.ones((b,)), post, spk, group
