"""`BrainConfig.state_dtype`: the ALIF state v, i, a, tr stored in bfloat16.

The tick computes in float32 and stores the state in bfloat16 (the kernel against its
reference: tests/test_pallas.py). Here, on the tiny brain: the state keeps its dtype
through steps and training chunks, the firing rates and the loss stay near the float32
brain's, the benchmark's floor counts the smaller state, and bad values are refused.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench
from neurogen_jax import brain, learning
from neurogen_jax.config import tiny_config
from neurogen_jax.plasticity import PlasticityConfig

TOKENS = [[3, 70, 101, 200], [5, 6, 7, 8], [9, 9, 9, 9], [40, 41, 42, 43], [1, 2, 3, 4],
          [100, 50, 25, 12]]


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_bfloat16_state_keeps_its_dtype_and_the_rates_of_float32(implementation,
                                                                 kernels_on_this_device):
  rates = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(state_dtype=dtype, implementation=implementation)
    params, state = brain.init(cfg, jax.random.PRNGKey(0), 4)
    per_token = []
    for toks in TOKENS:
      state, logits, aux = brain.cognitive_step(params, state, jnp.asarray(toks, jnp.int32), cfg)
      per_token.append(np.asarray(aux.rates_PxA))
    ns = state.neurons
    assert [z.dtype for z in (ns.v, ns.i, ns.a, ns.tr)] == [jnp.dtype(dtype)] * 4
    assert ns.s.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    rates[dtype] = np.mean(per_token, axis=(0, 1))  # [A] over tokens and phases
  print("area rates float32", rates["float32"], "bfloat16", rates["bfloat16"])
  assert np.all(rates["float32"] > 0.002)
  # bfloat16 rounding flips spikes near threshold: the rates move, but only a little.
  np.testing.assert_allclose(rates["bfloat16"], rates["float32"], rtol=0.25, atol=0.002)


def test_bfloat16_state_trains_like_float32():
  losses = {}
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 257, (4, 17)), jnp.int32)
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(state_dtype=dtype)
    pcfg = PlasticityConfig(replay_size=8, replay_every=2, replay_batch=2)
    opt = learning.make_optimizer(1e-2)
    ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 4)
    out = []
    for c in range(4):
      x = toks[:, 4 * c: 4 * c + 5]
      ts, m = learning.train_chunk(ts, x[:, :-1], x[:, 1:], config=cfg, pcfg=pcfg, optimizer=opt)
      assert bool(m.finite)
      out.append(float(m.loss))
    assert ts.brain_state.neurons.v.dtype == jnp.dtype(dtype)
    losses[dtype] = out
  print("chunk losses", losses)
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)


def test_benchmark_floor_counts_the_state_bytes():
  assert bench.state_bytes_per_neuron(tiny_config()) == 40
  assert bench.state_bytes_per_neuron(tiny_config(state_dtype="bfloat16")) == 24


@pytest.mark.parametrize("kw, match", [
    (dict(state_dtype="float16"), "state_dtype must be 'float32' or 'bfloat16'"),
    (dict(state_dtype="bfloat16", neuron_model="izhikevich"), "needs neuron_model='alif'"),
])
def test_bad_state_dtype_is_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(tiny_config(), **kw)
