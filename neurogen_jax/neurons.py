"""Neuron models: adaptive LIF (default) and Izhikevich, one tick at a time.

Both work on `NeuronState` arrays of shape [B, N] (B streams, N neurons) and take the
synaptic input current of the tick. Spikes use a Heaviside forward pass with a
triangular surrogate derivative (custom_jvp), so `jax.grad` flows through spikes; the
same pseudo-derivative is the post-synaptic factor of the e-prop learning rule.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from neurogen_jax.config import BrainConfig


class NeuronState(NamedTuple):
  """Per-stream neuron dynamics, each [B, N] float32.

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
  return NeuronState(v=z, i=z, a=z, tr=z, s=z)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(x: jax.Array, width: float = 0.5) -> jax.Array:
  """Heaviside(x) with a triangular surrogate derivative of half-width `width`."""
  del width
  return (x > 0).astype(x.dtype)


@spike.defjvp
def _spike_jvp(width, primals, tangents):
  (x,), (dx,) = primals, tangents
  return spike(x, width), pseudo_derivative(x, width) * dx


def pseudo_derivative(x: jax.Array, width: float = 0.5) -> jax.Array:
  """psi(x) = max(0, 1 - |x|/width) / width: the surrogate d spike / d x."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(x) / width) / width


def alif_step(config: BrainConfig, st: NeuronState, cur_BxN: jax.Array,
              theta_N: jax.Array) -> tuple[NeuronState, jax.Array]:
  """One tick of adaptive LIF.

  i <- a_s i + cur;  v <- a_m v + (1 - a_m) i;  thr = 1 + beta a + theta;
  s = H(v - thr);    v <- v - s thr (soft reset);  a <- a_a a + s;  tr <- a_t tr + s.
  Returns the new state and the scaled distance to threshold (v - thr)/thr, whose
  pseudo-derivative is the e-prop post-synaptic factor.
  """
  a_s, a_m = config.decay(config.tau_syn_ms), config.decay(config.tau_mem_ms)
  a_a, a_t = config.decay(config.tau_adapt_ms), config.decay(config.tau_trace_ms)
  i = a_s * st.i + cur_BxN
  v = a_m * st.v + (1.0 - a_m) * i
  thr = config.threshold + config.adapt_beta * st.a + theta_N
  x = (v - thr) / thr
  s = spike(x, config.surrogate_width)
  v = v - jax.lax.stop_gradient(thr) * s
  a = a_a * st.a + s
  tr = a_t * st.tr + s
  return NeuronState(v=v, i=i, a=a, tr=tr, s=s), x


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
  """The configured neuron model's tick (see `alif_step`, `izhikevich_step`)."""
  if config.neuron_model == "izhikevich":
    return izhikevich_step(config, st, cur_BxN, theta_N)
  return alif_step(config, st, cur_BxN, theta_N)
