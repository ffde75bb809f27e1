"""Neuron models: adaptive LIF (default) and Izhikevich, one tick at a time.

Both work on `NeuronState` arrays of shape [B, N] (B streams, N neurons) and take the
synaptic input current of the tick. Spikes use a Heaviside forward pass with a
triangular surrogate derivative (custom_jvp), so `jax.grad` flows through spikes; the
same pseudo-derivative is the post-synaptic factor of the e-prop learning rule. `spike`
and `pseudo_derivative` are defined once, beside the fused ALIF kernel
(`pallas/neuron_update.py`), and re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from neurogen_jax import ops
from neurogen_jax.config import BrainConfig
from neurogen_jax.pallas.neuron_update import (  # noqa: F401 (pseudo_derivative, spike re-exported)
    PhaseRows, accumulate, compose_current, pseudo_derivative, signed_spikes, spike)


class NeuronState(NamedTuple):
  """Per-stream neuron dynamics, each [B, N]: v, i, a, tr in `BrainConfig.state_dtype`
  (float32 by default), s float32.

  v: membrane (ALIF: dimensionless, threshold 1; Izhikevich: mV).
  i: synaptic current (low-pass filtered input, tau_syn).
  a: adaptation (ALIF: spike count filtered with tau_adapt; Izhikevich: recovery u).
  tr: filtered spike trace (tau_trace), read by the readout and by STDP.
  s: spikes of the last tick (0/1).
  """

  v: jax.Array
  i: jax.Array
  a: jax.Array
  tr: jax.Array
  s: jax.Array


def init_neuron_state(config: BrainConfig, batch: int) -> NeuronState:
  n = config.num_neurons
  z = jnp.zeros((batch, n), jnp.float32)
  if config.neuron_model == "izhikevich":
    v0 = jnp.full((batch, n), config.izh_c, jnp.float32)
    return NeuronState(v=v0, i=z, a=config.izh_b * v0, tr=z, s=z)
  zs = jnp.zeros((batch, n), config.state_dtype)
  return NeuronState(v=zs, i=zs, a=zs, tr=zs, s=z)


def alif_step(config: BrainConfig, st: NeuronState, cur_BxN: jax.Array,
              theta_N: jax.Array) -> tuple[NeuronState, jax.Array]:
  """One tick of adaptive LIF (the arithmetic lives beside its kernel, `ops.alif_update`).

  i <- a_s i + cur;  v <- a_m v + (1 - a_m) i;  thr = 1 + beta a + theta;
  s = H(v - thr);    v <- v - s thr (soft reset);  a <- a_a a + s;  tr <- a_t tr + s.
  Returns the new state and the scaled distance to threshold (v - thr)/thr, whose
  pseudo-derivative is the e-prop post-synaptic factor.
  """
  v, i, a, tr, s, x = ops.alif_update(st.v, st.i, st.a, st.tr, cur_BxN, theta_N,
                                      **alif_constants(config),
                                      implementation=config.implementation)
  return NeuronState(v=v, i=i, a=a, tr=tr, s=s), x


def alif_constants(config: BrainConfig) -> dict[str, float]:
  """The ALIF kernels' static constants (decays per tick, threshold model) of a config."""
  return dict(a_s=config.decay(config.tau_syn_ms), a_m=config.decay(config.tau_mem_ms),
              a_a=config.decay(config.tau_adapt_ms), a_t=config.decay(config.tau_trace_ms),
              beta=config.adapt_beta, threshold=config.threshold, width=config.surrogate_width)


def izhikevich_step(config: BrainConfig, st: NeuronState, cur_BxN: jax.Array,
                    theta_N: jax.Array) -> tuple[NeuronState, jax.Array]:
  """One tick of Izhikevich (2003) dynamics, Euler sub-steps of `izh_substep_ms`.

  dv/dt = 0.04 v^2 + 5 v + 140 - u + I;  du/dt = a (b v - u);  v >= 30 mV: v <- c, u <- u + d.
  I = izh_current_scale * (synaptic current - theta). A tick spikes if any sub-step did.
  """
  a_s, a_t = config.decay(config.tau_syn_ms), config.decay(config.tau_trace_ms)
  i = a_s * st.i + cur_BxN
  current = config.izh_current_scale * (i - theta_N)
  n_sub = max(1, round(config.dt_ms / config.izh_substep_ms))
  h = config.dt_ms / n_sub
  v, u = st.v, st.a
  fired = jnp.zeros_like(v)
  x = jnp.zeros_like(v)
  for _ in range(n_sub):
    v = v + h * (0.04 * v * v + 5.0 * v + 140.0 - u + current)
    u = u + h * config.izh_a * (config.izh_b * v - u)
    x_sub = (v - 30.0) / 30.0
    s_sub = spike(x_sub, config.surrogate_width)
    x = jnp.maximum(x, x_sub)
    fired = jnp.maximum(fired, s_sub)
    hit = jax.lax.stop_gradient(s_sub)
    v = jnp.where(hit > 0, config.izh_c, v)
    u = u + config.izh_d * hit
  tr = a_t * st.tr + fired
  return NeuronState(v=v, i=i, a=u, tr=tr, s=fired), x


def neuron_step(config: BrainConfig, st: NeuronState, cur_BxN: jax.Array,
                theta_N: jax.Array) -> tuple[NeuronState, jax.Array]:
  """The configured neuron model's tick (see `alif_step`, `izhikevich_step`); the brain
  runs `neuron_tick`, which adds the input current and the per-token sums."""
  if config.neuron_model == "izhikevich":
    return izhikevich_step(config, st, cur_BxN, theta_N)
  return alif_step(config, st, cur_BxN, theta_N)


class Propagation(NamedTuple):
  """What a tick propagates: the previous tick's signed spikes q_BxN through the
  block-sparse tiles (`ops.propagate`'s layout) with this tick's per-tile gains."""

  q_BxN: jax.Array
  w_RxKxTxT: jax.Array
  col_RxK: jax.Array
  gain_RxK: jax.Array


def neuron_tick(config: BrainConfig, st: NeuronState, spikes_in: Propagation,
                drive_BxN: jax.Array, gate_B: jax.Array, vec_6xN: jax.Array | PhaseRows,
                read_BxN: jax.Array,
                post_BxN: jax.Array | None = None, spikes_BxN: jax.Array | None = None,
                signed_dtype=jnp.bfloat16, group_N: jax.Array | None = None, n_groups: int = 0,
                write_s: bool = True
                ) -> tuple[NeuronState, jax.Array, jax.Array, jax.Array | None, jax.Array | None,
                           jax.Array | None]:
  """One tick of the brain's neurons: the propagation of the previous tick's spikes, the
  input current, the neuron update and the per-token sums.

  prop = `ops.propagate`(spikes_in) (its current in `config.current_dtype`);
  cur = prop * (gate_B where gate_mask) + drive * gain; the neuron model's step; then
  q = s * sign (the signed spikes the next tick propagates, in `signed_dtype`),
  read += read_weight * tr and, when post/spikes are given, post += psi(x) * learn and
  spikes += s. vec_6xN rows: `neuron_update.TICK_VEC_ROWS` (theta, gate_mask, gain, read,
  learn, sign), or every phase's rows laid out once per token (`ops.tick_rows(...).at(p)`).
  ALIF runs it as `ops.propagate_tick`: with Pallas two kernels (the propagation, then the
  whole neuron tick), or one with `config.fuse_propagation`.
  With group_N and n_groups > 0 it also counts the tick's spikes per group (`group_counts`;
  the Pallas kernel does so as it writes them). write_s=False (ALIF): the returned state
  keeps st.s, not this tick's spikes, which the caller rebuilds as q * sign when it needs
  them (the kernel then writes 4 bytes per neuron and stream less).
  Returns (state, q, read, post, spikes, counts_BxG); post and spikes are None when not
  given, counts when there are no groups.
  """
  if config.neuron_model == "izhikevich":
    prop_BxN = ops.propagate(*spikes_in, config.implementation,
                             events_variant=config.events_variant, out_dtype=config.current_dtype,
                             backend=config.propagation_backend)
    if isinstance(vec_6xN, PhaseRows):
      vec_6xN = vec_6xN.vec_6xN(st.v.shape[1])
    theta_N, mask_N, gain_N, read_N, learn_N, sign_N = vec_6xN
    cur_BxN = compose_current(prop_BxN, drive_BxN, gate_B[:, None], mask_N, gain_N)
    st, x_BxN = izhikevich_step(config, st, cur_BxN, theta_N)
    q_BxN = signed_spikes(st.s, sign_N, signed_dtype)
    sums = accumulate(st.tr, st.s, x_BxN, read_N, learn_N, read_BxN, post_BxN, spikes_BxN,
                      config.surrogate_width)
    counts_BxG = ops.group_counts(st.s, group_N, n_groups) if n_groups else None
  else:
    outs = ops.propagate_tick(*spikes_in, st.v, st.i, st.a, st.tr, drive_BxN, gate_B, vec_6xN,
                              read_BxN, post_BxN, spikes_BxN, group_N, **alif_constants(config),
                              signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s,
                              implementation=config.implementation,
                              fuse=config.fuse_propagation, events_variant=config.events_variant,
                              out_dtype=config.current_dtype,
                              backend=config.propagation_backend)
    if n_groups:
      outs, counts_BxG = outs[:-1], outs[-1]
    else:
      counts_BxG = None
    s_BxN = outs[4] if write_s else st.s
    st, q_BxN, sums = NeuronState(*outs[:4], s_BxN), outs[5], outs[6:]
  return ((st, q_BxN, sums[0]) + ((sums[1], sums[2]) if post_BxN is not None else (None, None))
          + (counts_BxG,))
