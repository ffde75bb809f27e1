"""Neuron models against closed forms and known rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import neurons
from neurogen_jax.config import tiny_config


def _run(cfg, current, ticks, n=4):
  st = neurons.init_neuron_state(cfg, 1)._replace(**{k: jnp.zeros((1, n)) for k in ("i", "a", "tr", "s")})
  st = st._replace(v=jnp.full((1, n), cfg.izh_c if cfg.neuron_model == "izhikevich" else 0.0))
  if cfg.neuron_model == "izhikevich":
    st = st._replace(a=cfg.izh_b * st.v)
  theta = jnp.zeros((n,))
  vs, spikes = [], []
  for _ in range(ticks):
    st, _ = neurons.neuron_step(cfg, st, current, theta)
    vs.append(np.asarray(st.v[0]))
    spikes.append(np.asarray(st.s[0]))
  return np.array(vs), np.array(spikes)


def test_lif_step_response_matches_closed_form():
  """Below threshold, a current step I0 at tick 0 gives i_n = I0 a_s^n and
  v_n = (1-a_m) I0 sum_{j<=n} a_m^(n-j) a_s^j (exact discrete solution)."""
  cfg = tiny_config()
  i0 = 0.3
  a_s, a_m = cfg.decay(cfg.tau_syn_ms), cfg.decay(cfg.tau_mem_ms)
  st = neurons.init_neuron_state(cfg, 1)
  st = st._replace(**{k: v[:, :3] for k, v in st._asdict().items()})
  theta = jnp.zeros((3,))
  vs = []
  cur = jnp.full((1, 3), i0)
  for n in range(30):
    st, _ = neurons.alif_step(cfg, st, cur if n == 0 else jnp.zeros((1, 3)), theta)
    vs.append(float(st.v[0, 0]))
  expected = [(1 - a_m) * i0 * sum(a_m ** (n - j) * a_s ** j for j in range(n + 1)) for n in range(30)]
  np.testing.assert_allclose(vs, expected, rtol=1e-5, atol=1e-7)
  assert max(vs) < cfg.threshold  # no spike, the closed form holds


def test_lif_constant_current_settles_and_spikes_above_threshold():
  cfg = tiny_config()
  a_s = cfg.decay(cfg.tau_syn_ms)
  # Constant input I: steady i = I/(1-a_s) and v -> i. Below threshold: settles there.
  low = 0.2 * (1 - a_s)
  vs, spk = _run(cfg, jnp.full((1, 4), low), 200)
  assert spk.sum() == 0
  np.testing.assert_allclose(vs[-1], 0.2, rtol=1e-3)
  # Above threshold: it fires, and adaptation lowers the rate over time.
  high = 2.0 * (1 - a_s)
  _, spk = _run(cfg, jnp.full((1, 4), high), 400)
  early, late = spk[:50].mean(), spk[-100:].mean()
  assert early > late > 0.0


def test_izhikevich_regular_spiking_rate():
  """Regular spiking (a=.02 b=.2 c=-65 d=8) with I=10 fires tonically at ~10-40 Hz
  (Izhikevich 2003, Fig. 2 'regular spiking' regime)."""
  cfg = tiny_config(neuron_model="izhikevich", dt_ms=1.0, izh_substep_ms=0.25, izh_current_scale=1.0)
  a_s = cfg.decay(cfg.tau_syn_ms)
  steady_i = 10.0
  ticks = 1000  # 1 s
  _, spk = _run(cfg, jnp.full((1, 4), steady_i * (1 - a_s)), ticks)
  rate_hz = spk[200:].sum(axis=0) / 0.8
  assert np.all(rate_hz > 10) and np.all(rate_hz < 40), rate_hz


def test_surrogate_gradient_is_triangular():
  x = jnp.linspace(-1.0, 1.0, 9)
  g = jax.vmap(jax.grad(lambda z: neurons.spike(z, 0.5)))(x)
  np.testing.assert_allclose(g, np.maximum(0, 1 - np.abs(np.asarray(x)) / 0.5) / 0.5, atol=1e-6)
  assert float(neurons.spike(jnp.float32(0.1))) == 1.0 and float(neurons.spike(jnp.float32(-0.1))) == 0.0
