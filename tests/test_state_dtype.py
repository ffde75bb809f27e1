"""Leaner per-tick dtypes: `BrainConfig.state_dtype` (the ALIF state v, i, a, tr in
bfloat16), `current_dtype` (the propagated current in bfloat16) and `spike_dtype` (the
propagated signed spikes in int8).

The kernels against their references: tests/test_pallas.py. Here, on the tiny brain: int8
spikes change nothing (they are exact), the state keeps its dtype through steps and
training chunks, the firing rates and the loss stay near the float32 brain's, the
benchmark's floor counts the smaller state, and bad values are refused.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench
from neurogen_jax import brain, learning, readout
from neurogen_jax.config import seed_phases, tiny_config
from neurogen_jax.plasticity import PlasticityConfig

TOKENS = [[3, 70, 101, 200], [5, 6, 7, 8], [9, 9, 9, 9], [40, 41, 42, 43], [1, 2, 3, 4],
          [100, 50, 25, 12]]
LEAN = dict(state_dtype="bfloat16", current_dtype="bfloat16", spike_dtype="int8",
            readout_matmul_dtype="bfloat16")


def _run(cfg, batch, tokens=TOKENS):
  params, state = brain.init(cfg, jax.random.PRNGKey(0), batch)
  rates = []
  for toks in tokens:
    state, logits, aux = brain.cognitive_step(params, state,
                                              jnp.asarray(toks[:batch], jnp.int32), cfg)
    rates.append(np.asarray(aux.rates_PxA))
  return state, logits, np.mean(rates, axis=(0, 1))  # [A] over tokens and phases


@pytest.mark.parametrize("implementation, batch", [("xla", 4), ("pallas", 4), ("pallas", 1)])
def test_int8_spikes_give_the_same_brain(implementation, batch, kernels_on_this_device):
  """q = s * sign is exactly 0 or +-1: int8 propagates the same currents (one stream:
  through the event kernel), so every leaf of the state is bit-identical."""
  base = tiny_config(implementation=implementation)
  want, _, rates = _run(base, batch, TOKENS[:3])
  got, _, _ = _run(base.replace(spike_dtype="int8"), batch, TOKENS[:3])
  assert np.all(rates > 0.002)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert g.dtype == w.dtype
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("lean", [dict(state_dtype="bfloat16"), LEAN], ids=["state", "all"])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_lean_dtypes_keep_the_rates_of_float32(implementation, lean, kernels_on_this_device):
  base = tiny_config(implementation=implementation)
  state32, _, rates32 = _run(base, 4)
  state, logits, rates = _run(base.replace(**lean), 4)
  ns = state.neurons
  dtype = jnp.dtype(lean.get("state_dtype", "float32"))
  assert [z.dtype for z in (ns.v, ns.i, ns.a, ns.tr)] == [dtype] * 4
  assert ns.s.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  print(lean, "area rates float32", rates32, "lean", rates)
  assert np.all(rates32 > 0.002)
  # Rounding flips spikes near threshold: the rates move, but only a little ...
  np.testing.assert_allclose(rates, rates32, rtol=0.25, atol=0.002)
  # ... and they do move: the option is not silently ignored.
  assert float(jnp.max(jnp.abs(ns.v.astype(jnp.float32) - state32.neurons.v))) > 0


def test_lean_dtypes_train_like_float32():
  lean = LEAN
  losses = {}
  # Five tokens in turn: a readout that learns at all lowers the loss within four chunks.
  toks = jnp.asarray((np.arange(4)[:, None] + np.arange(17)[None, :]) % 5 + 60, jnp.int32)
  for name, kw in (("float32", {}), ("lean", lean)):
    cfg = tiny_config(**kw)
    pcfg = PlasticityConfig(replay_size=8, replay_every=2, replay_batch=2)
    opt = learning.make_optimizer(1e-2)
    ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 4)
    out = []
    for c in range(4):
      x = toks[:, 4 * c: 4 * c + 5]
      ts, m = learning.train_chunk(ts, x[:, :-1], x[:, 1:], config=cfg, pcfg=pcfg, optimizer=opt)
      assert bool(m.finite)
      out.append(float(m.loss))
    assert ts.brain_state.neurons.v.dtype == jnp.dtype(cfg.state_dtype)
    losses[name] = out
  print("chunk losses", losses)
  assert losses["float32"][-1] < losses["float32"][0] - 0.1  # it learns at all
  np.testing.assert_allclose(losses["lean"], losses["float32"], rtol=0.02)


def test_bptt_refuses_int8_spikes():
  cfg = tiny_config(spike_dtype="int8")
  pcfg = PlasticityConfig()
  opt = learning.make_optimizer(1e-2)
  ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 2, mode="bptt")
  x = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="use spike_dtype='auto' for bptt"):
    learning.train_chunk(ts, x, x, config=cfg, pcfg=pcfg, optimizer=opt, mode="bptt")


def test_benchmark_floor_counts_the_state_bytes():
  assert bench.state_bytes_per_neuron(tiny_config()) == 40
  assert bench.state_bytes_per_neuron(tiny_config(state_dtype="bfloat16")) == 24


@pytest.mark.parametrize("kw, match", [
    (dict(state_dtype="float16"), "state_dtype must be 'float32' or 'bfloat16'"),
    (dict(state_dtype="bfloat16", neuron_model="izhikevich"), "needs neuron_model='alif'"),
    (dict(spike_dtype="bfloat16"), "spike_dtype must be 'auto'"),
    (dict(current_dtype="int8"), "current_dtype must be 'float32' or 'bfloat16'"),
    (dict(readout_matmul_dtype="float16"), "readout_matmul_dtype must be 'float32' or 'bfloat16'"),
])
def test_bad_dtypes_are_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(tiny_config(), **kw)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_spike_counts_are_exact(implementation, kernels_on_this_device):
  """The token's spike counts travel through the ticks in bfloat16 (exact up to 256
  ticks): they equal the sum of the tick-by-tick spikes (stream 0's raster) exactly; a
  token of more than 256 ticks counts in float32."""
  cfg = tiny_config(implementation=implementation)
  assert brain.spike_count_dtype(cfg) == jnp.bfloat16
  long = cfg.replace(phases=seed_phases((60, 60, 60, 40, 37), len(cfg.pathways)))
  assert long.ticks_per_token == 257 and brain.spike_count_dtype(long) == jnp.float32
  params, state = brain.init(cfg, jax.random.PRNGKey(0), 2)
  for toks in TOKENS[:2]:
    state, _, aux = brain.cognitive_step(params, state, jnp.asarray(toks[:2], jnp.int32), cfg,
                                         collect=True, raster_stride=1)
    counts = np.asarray(aux.spikes_BxN)
    np.testing.assert_array_equal(counts[0], np.asarray(aux.raster_TxS, np.float32).sum(axis=0))
    assert counts.max() > 1 and counts.max() <= cfg.ticks_per_token


def test_bfloat16_dots_take_their_gradients_in_bfloat16_too():
  """`readout.weights_dot` with bfloat16 operands: the gradient's dots round the cotangent
  to bfloat16 as well (mixed precision; autodiff had formed them in float32): both
  gradients equal the dots of the rounded operands, and differ from float32's by rounding."""
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(5), 3)
  x_BxK = jax.random.normal(kx, (6, 64))
  w_KxN = jax.random.normal(kw, (64, 40))
  g_BxN = jax.random.normal(kg, (6, 40))
  bf = jnp.bfloat16
  out, vjp = jax.vjp(lambda x, w: readout.weights_dot(x, w, bf), x_BxK, w_KxN)
  gx, gw = vjp(g_BxN)
  assert out.dtype == gx.dtype == gw.dtype == jnp.float32
  r = lambda z: z.astype(bf).astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  np.testing.assert_allclose(out, jnp.dot(r(x_BxK), r(w_KxN), precision=hi), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx, jnp.dot(r(g_BxN), r(w_KxN).T, precision=hi), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw, jnp.dot(r(x_BxK).T, r(g_BxN), precision=hi), rtol=1e-5, atol=1e-5)
  gw32 = jnp.dot(x_BxK.T, g_BxN, precision=hi)
  assert 1e-4 < float(jnp.max(jnp.abs(gw - gw32))) < 0.05 * float(jnp.max(jnp.abs(gw32)))
  # A bfloat16 input keeps its dtype in its gradient; float32 operands stay plain float32.
  gxb = jax.grad(lambda x: jnp.sum(readout.weights_dot(x, w_KxN, bf)))(x_BxK.astype(bf))
  assert gxb.dtype == bf
  g32 = jax.grad(lambda w: jnp.sum(readout.weights_dot(x_BxK, w) * g_BxN))(w_KxN)
  np.testing.assert_allclose(g32, gw32, rtol=2e-3, atol=2e-3)


def test_bfloat16_readout_dots_are_close_to_float32():
  """readout_matmul_dtype="bfloat16": the logits move by bfloat16 rounding (a few 1e-3 of
  their spread), not more, and their gradients point the same way."""
  cfg = tiny_config()
  params, _ = brain.init(cfg, jax.random.PRNGKey(0), 4)
  w_out = jax.random.normal(jax.random.PRNGKey(1), params.w_out.shape)
  feats = jax.random.uniform(jax.random.PRNGKey(2), (4, cfg.readout_size))
  bf16 = readout.matmul_dtype(cfg.replace(readout_matmul_dtype="bfloat16"))
  assert readout.matmul_dtype(cfg) is None and bf16 == jnp.bfloat16
  lg32, lg16 = (readout.logits(params.embed, w_out, params.b_out, feats, d) for d in (None, bf16))
  assert lg16.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(lg16 - lg32)))
  assert 0 < err < 0.02 * float(jnp.std(lg32 - params.b_out))
  tgt = jnp.asarray([1, 2, 3, 4])
  grad = lambda d: jax.grad(lambda w: jnp.mean(readout.cross_entropy(
      readout.logits(params.embed, w, params.b_out, feats, d), tgt)))(w_out)
  g32, g16 = grad(None), grad(bf16)
  cos = float(jnp.sum(g32 * g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16)))
  assert cos > 0.999
