"""Each Pallas kernel against its pure-jnp reference.

Every test runs twice through the `mode` fixture: in interpret mode (CPU, always) and
compiled (`gpu` marker, skipped without a GPU). Interpret mode starts every output buffer
as NaN, so an all-finite result proves that every element was written. Inputs are fresh
random draws (never zeros); tolerances scale with the dtype's epsilon and the square root
of the reduction length.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, ops
from neurogen_jax import plasticity as rules_module
from neurogen_jax.config import BrainConfig, tiny_config
from neurogen_jax.neurons import NeuronState, alif_step
from neurogen_jax.pallas import events, mosaic, neuron_update, plasticity, propagate

# (T, K, B): an orthogonal array over T in {16, 32, 128}, K in {1, 4, 8}, B in {1, 3, 16}:
# every pair of values appears once, in 9 cases instead of 27.
SHAPES = [(16, 1, 1), (16, 4, 3), (16, 8, 16), (32, 1, 3), (32, 4, 16), (32, 8, 1),
          (128, 1, 16), (128, 4, 1), (128, 8, 3)]
SHAPE_IDS = [f"T{t}-K{k}-B{b}" for t, k, b in SHAPES]
NUM_BLOCKS = 4  # R: post (and pre) blocks per test brain

EPS = {"float32": 2.0**-23, "tf32": 2.0**-10, "bfloat16": 2.0**-8}
ALIF = dict(a_s=0.78, a_m=0.78, a_a=0.975, a_t=0.9, beta=0.5, threshold=1.0, width=0.5)


def _on_gpu() -> bool:
  return jax.devices()[0].platform == "gpu"


@pytest.fixture(params=[pytest.param(True, id="interpret"),
                        pytest.param(False, id="compiled", marks=pytest.mark.gpu)])
def interpret(request):
  if not request.param and not _on_gpu():
    pytest.skip("compiled Pallas kernels need a GPU")
  return request.param


def assert_close(out, ref, precision: str, length: int, factor: float = 4.0):
  """max |out - ref| <= factor * eps * sqrt(length) * max |ref|, and no NaN/inf."""
  out = np.asarray(jnp.asarray(out, jnp.float32))
  ref = np.asarray(jnp.asarray(ref, jnp.float32))
  assert out.shape == ref.shape
  assert np.all(np.isfinite(out)), "output has NaN/inf: an element was not written"
  scale = max(float(np.max(np.abs(ref))), 1e-30)
  err = float(np.max(np.abs(out - ref))) / scale
  tol = factor * EPS[precision] * math.sqrt(length)
  assert err <= tol, f"relative error {err:.3g} > {tol:.3g} ({precision}, length {length})"


def flat_uniform(key, shape, **kw):
  """jax.random.uniform of `shape`, drawn flat: the same values, but XLA:CPU compiles a
  rank-4 draw ~10x slower than a flat one."""
  return jax.random.uniform(key, (math.prod(shape),), **kw).reshape(shape)


def layout(seed: int, t: int, k: int, dtype=jnp.bfloat16):
  """Random ELL layout with at least one repeated column (when K > 1) and fresh weights."""
  kc, kw, kg = jax.random.split(jax.random.key(seed), 3)
  col = jax.random.randint(kc, (NUM_BLOCKS, k), 0, NUM_BLOCKS)
  if k > 1:
    col = col.at[0, 1].set(col[0, 0])
  w = flat_uniform(kw, (NUM_BLOCKS, k, t, t), minval=0.05, maxval=1.0).astype(dtype)
  gain = jax.random.uniform(kg, (NUM_BLOCKS, k), minval=-1.5, maxval=1.5)
  return col, w, gain


def spikes(seed: int, shape, rate: float, dtype=jnp.bfloat16):
  """Signed spikes in {-1, 0, 1} at `rate`, with at least one spike."""
  ka, ks = jax.random.split(jax.random.key(seed))
  on = jax.random.uniform(ka, shape) < rate
  on = on.at[..., 0].set(True)
  sign = jnp.where(jax.random.uniform(ks, shape) < 0.8, 1.0, -1.0)
  return (on * sign).astype(dtype)


# ---------------------------------------------------------------------------- propagate


@pytest.mark.parametrize("t,k,b", SHAPES, ids=SHAPE_IDS)
def test_propagate_matches_reference(interpret, t, k, b):
  col, w, gain = layout(1, t, k)
  spk = spikes(2, (b, NUM_BLOCKS * t), 0.3)
  out = jax.jit(lambda *a: propagate.propagate(*a, interpret=interpret))(spk, w, col, gain)
  ref = jax.jit(propagate.propagate_reference)(spk, w, col, gain)
  assert out.dtype == jnp.float32
  assert_close(out, ref, "float32", k * t)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8])
def test_propagate_spike_dtypes_and_large_batch(interpret, dtype):
  col, w, gain = layout(3, 16, 4)
  spk = spikes(4, (80, NUM_BLOCKS * 16), 0.2, dtype)  # B = 80: two batch tiles of 64
  out = propagate.propagate(spk, w, col, gain, interpret=interpret)
  assert_close(out, propagate.propagate_reference(spk, w, col, gain), "float32", 4 * 16)
  if dtype == jnp.int8:  # integer spikes: grads for w and gain, none for the spikes
    g_w = jax.grad(lambda ww: jnp.sum(propagate.propagate(spk, ww, col, gain, interpret=interpret)))(w)
    g_ref = jax.grad(lambda ww: jnp.sum(propagate.propagate_reference(spk, ww, col, gain)))(w)
    assert_close(g_w, g_ref, "bfloat16", 1)


def test_propagate_bfloat16_current_is_the_rounded_float32_sum(interpret):
  """out_dtype=bfloat16 (`BrainConfig.current_dtype`): the float32 sum, rounded once."""
  col, w, gain = layout(5, 16, 4)
  spk = spikes(6, (20, NUM_BLOCKS * 16), 0.3, jnp.int8)
  out = propagate.propagate(spk, w, col, gain, out_dtype=jnp.bfloat16, interpret=interpret)
  ref = propagate.propagate_reference(spk, w, col, gain)
  assert out.dtype == jnp.bfloat16 and float(jnp.max(jnp.abs(ref))) > 1.0
  assert_close(out, ref, "bfloat16", 1, factor=1.0)  # one rounding of the float32 sum
  # Differentiable as with float32: the cotangent comes in bfloat16.
  g_w = jax.grad(lambda ww: jnp.sum(propagate.propagate(
      spk, ww, col, gain, out_dtype=jnp.bfloat16, interpret=interpret).astype(jnp.float32)))(w)
  g_ref = jax.grad(lambda ww: jnp.sum(propagate.propagate_reference(spk, ww, col, gain)))(w)
  assert_close(g_w, g_ref, "bfloat16", 1)
  with pytest.raises(ValueError, match="out_dtype must be float32 or bfloat16"):
    propagate.propagate(spk, w, col, gain, out_dtype=jnp.float16, interpret=interpret)


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_propagate_mosaic_gpu_matches_reference(interpret, out_dtype):
  if not interpret and not propagate._is_hopper():
    pytest.skip("the mosaic_gpu propagation is Hopper-only (wgmma)")
  # B = 200: two 128-row batch tiles, the second part padding; 4 programs in interpret mode
  # walk 8 output tiles (two each), the persistent loop's second pass included.
  t, k, b = (64, 3, 200) if interpret else (128, 8, 300)
  col, w, gain = layout(40, t, k)
  gain = gain.at[:, -1].set(gain[:, 0])  # a run of equal gains along k, then changes
  spk = spikes(41, (b, NUM_BLOCKS * t), 0.3)
  out = propagate.propagate(spk, w, col, gain, backend="mosaic_gpu", out_dtype=out_dtype,
                            interpret=interpret)
  assert out.dtype == jnp.dtype(out_dtype)
  ref = propagate.propagate_reference(spk, w, col, gain)
  if out_dtype == "float32":
    assert_close(out, ref, "float32", k * t)
  else:  # the float32 sum rounded once: within one bfloat16 rounding
    assert_close(out, ref, "bfloat16", 1, factor=1.0)
  # The same function as the Triton kernel, gradients included (the shared custom_vjp).
  tri = propagate.propagate(spk, w, col, gain, backend="triton", out_dtype=out_dtype,
                            interpret=interpret)
  assert_close(out, tri, "float32" if out_dtype == "float32" else "bfloat16", k * t)
  g_w = jax.grad(lambda ww: jnp.sum(propagate.propagate(
      spk, ww, col, gain, backend="mosaic_gpu", interpret=interpret).astype(jnp.float32)))(w)
  g_ref = jax.grad(lambda ww: jnp.sum(propagate.propagate_reference(spk, ww, col, gain)))(w)
  assert_close(g_w, g_ref, "bfloat16", 1)


def test_propagate_backend_choice_and_refusals(monkeypatch):
  col, w, gain = layout(42, 128, 2)
  w64 = layout(42, 64, 2)[1]
  # Off Hopper (and in interpret mode, always) "auto" is Triton.
  assert propagate.choose_backend(256, w) == ("mosaic_gpu" if propagate._is_hopper() else "triton")
  assert propagate.choose_backend(256, w, interpret=True) == "triton"
  monkeypatch.setattr(propagate, "_is_hopper", lambda: True)
  assert propagate.choose_backend(propagate.MOSAIC_MIN_B, w) == "mosaic_gpu"
  assert propagate.choose_backend(propagate.MOSAIC_MIN_B, w64) == "mosaic_gpu"
  assert propagate.choose_backend(propagate.MOSAIC_MIN_B - 1, w) == "triton"  # mostly padding
  assert propagate.choose_backend(256, w.astype(jnp.float32)) == "triton"  # wgmma: 16-bit only
  assert propagate.choose_backend(256, layout(42, 32, 2)[1]) == "triton"   # rows < 128 bytes
  spk = spikes(43, (4, NUM_BLOCKS * 128), 0.3)
  with pytest.raises(ValueError, match="mosaic_gpu backend takes tiles of"):
    propagate.propagate(spk, w.astype(jnp.float32), col, gain, backend="mosaic_gpu")
  monkeypatch.setattr(propagate, "_is_hopper", lambda: False)
  with pytest.raises(ValueError, match="needs a Hopper GPU"):
    propagate.propagate(spk, w, col, gain, backend="mosaic_gpu")
  with pytest.raises(ValueError, match="128-row batch tiles"):
    propagate.propagate(spk, w, col, gain, backend="mosaic_gpu", block_b=64, interpret=True)
  with pytest.raises(ValueError, match="backend must be one of"):
    propagate.propagate(spk, w, col, gain, backend="cuda")


@pytest.mark.gpu
def test_brain_with_mosaic_gpu_propagation_matches_triton():
  """A brain of 64-neuron tiles at B = 128 on Pallas: the Mosaic GPU propagation gives the
  Triton one's rates and logits, and its states within float32 rounding of the current
  except where that rounding moved a neuron across its threshold (a spike more or less
  resets v: measured 41 of 319,488 state values on an H200 after 3 tokens; <= 0.1% here)."""
  if not propagate._is_hopper():
    pytest.skip("the mosaic_gpu propagation is Hopper-only (wgmma)")
  base = tiny_config(implementation="pallas", tile=64, propagation_backend="triton")
  runs = []
  for backend in ("triton", "mosaic_gpu"):
    cfg = base.replace(propagation_backend=backend)
    params, state = brain.init(cfg, jax.random.PRNGKey(0), 128)
    toks = jax.random.randint(jax.random.PRNGKey(1), (3, 128), 0, cfg.vocab_size)
    rates = []
    for tok_B in toks:
      state, logits, aux = brain.cognitive_step(params, state, tok_B, cfg)
      rates.append(np.asarray(aux.rates_PxA))
    runs.append((state, logits, np.mean(rates, axis=(0, 1))))
  (s_t, l_t, r_t), (s_m, l_m, r_m) = runs
  assert np.all(r_t > 0.002)
  np.testing.assert_allclose(r_m, r_t, rtol=0.02)
  np.testing.assert_allclose(np.asarray(l_m), np.asarray(l_t), rtol=2e-2, atol=2e-2)
  off, total = 0, 0
  for g, w in zip(jax.tree.leaves(s_m), jax.tree.leaves(s_t), strict=True):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert g.shape == w.shape and np.all(np.isfinite(g))
    off += int(np.sum(~np.isclose(g, w, rtol=2e-2, atol=2e-2)))
    total += g.size
  assert off <= 1e-3 * total, f"{off} of {total} state values differ"


def test_propagate_grads_match_reference(interpret):
  col, w, gain = layout(5, 16, 4)
  spk = spikes(6, (3, NUM_BLOCKS * 16), 0.3, jnp.float32)
  probe = jax.random.normal(jax.random.key(7), (3, NUM_BLOCKS * 16))

  def loss(fn):
    return lambda s, ww, g: jnp.sum(jnp.sin(fn(s, ww, col, g)) * probe)

  pallas_fn = lambda *a: propagate.propagate(*a, interpret=interpret)
  got = jax.grad(loss(pallas_fn), argnums=(0, 1, 2))(spk, w, gain)
  want = jax.grad(loss(propagate.propagate_reference), argnums=(0, 1, 2))(spk, w, gain)
  # d w goes through the f32 outer product, which a GPU runs at TF32 (interpret mode there
  # too, and the reference's dots alike): measured 1.3e-4 on an H200 against 1.3e-5 allowed
  # for float32.
  precision = "tf32" if _on_gpu() else "float32"
  for g, r, name in zip(got, want, ("spk", "w", "gain")):
    assert g.dtype == r.dtype, name
    assert_close(g, r, "bfloat16" if name == "w" else precision, 3 * 16 * 16)


# --------------------------------------------------------------------------- plasticity


@pytest.mark.parametrize("t,k,b", SHAPES, ids=SHAPE_IDS)
def test_tile_outer_matches_reference(interpret, t, k, b):
  col, _, _ = layout(8, t, k)
  kp, kq = jax.random.split(jax.random.key(9))
  pre = jax.random.uniform(kp, (b, NUM_BLOCKS * t)).astype(jnp.bfloat16)
  post = jax.random.normal(kq, (b, NUM_BLOCKS * t)).astype(jnp.bfloat16)
  out = jax.jit(lambda *a: plasticity.tile_outer(*a, t, interpret=interpret))(pre, post, col)
  ref = jax.jit(lambda *a: plasticity.tile_outer_reference(*a, t))(pre, post, col)
  assert out.shape == (NUM_BLOCKS, k, t, t) and out.dtype == jnp.float32
  assert_close(out, ref, "float32", b)


def test_tile_outer_f32_traces(interpret):
  col, _, _ = layout(10, 32, 4)
  kp, kq = jax.random.split(jax.random.key(11))
  pre = jax.random.uniform(kp, (20, NUM_BLOCKS * 32))  # B = 20: padded to 32
  post = jax.random.normal(kq, (20, NUM_BLOCKS * 32))
  out = plasticity.tile_outer(pre, post, col, 32, interpret=interpret)
  ref = plasticity.tile_outer_reference(pre, post, col, 32)
  assert_close(out, ref, "float32" if interpret else "tf32", 20)


@pytest.mark.parametrize("t,k,b", SHAPES[::2], ids=SHAPE_IDS[::2])
def test_tile_update_matches_reference(interpret, t, k, b):
  col, w, _ = layout(12, t, k)
  kp, kq, ks = jax.random.split(jax.random.key(13), 3)
  pre = jax.random.uniform(kp, (b, NUM_BLOCKS * t))
  post = jax.random.normal(kq, (b, NUM_BLOCKS * t))
  scale = jax.random.uniform(ks, (NUM_BLOCKS, k), minval=0.01, maxval=0.2)
  out = plasticity.tile_update(w, pre, post, col, scale, 0.1, 0.9, interpret=interpret)
  ref = plasticity.tile_update_reference(w, pre, post, col, scale, 0.1, 0.9)
  assert out.dtype == w.dtype and out.shape == w.shape
  assert_close(out, ref, "bfloat16", 1)
  # Every tile moved (and the bounds bind somewhere): the update reached all tiles.
  moved = jnp.any(out != w, axis=(2, 3))
  assert bool(jnp.all(moved)), "some tile was not updated"
  assert float(jnp.min(out)) >= 0.1 and float(jnp.max(out)) <= 0.9


def test_tile_update_scalar_scale(interpret):
  col, w, _ = layout(14, 16, 8)
  kp, kq = jax.random.split(jax.random.key(15))
  pre = jax.random.uniform(kp, (3, NUM_BLOCKS * 16))
  post = jax.random.normal(kq, (3, NUM_BLOCKS * 16))
  out = plasticity.tile_update(w, pre, post, col, 0.05, 0.0, 1.0, interpret=interpret)
  assert_close(out, plasticity.tile_update_reference(w, pre, post, col, 0.05, 0.0, 1.0),
               "bfloat16", 1)


# ---------------------------------------------------------------- the per-token synapse pass


def synapse_inputs(seed: int, t: int, k: int, b: int, w_dtype=jnp.bfloat16):
  """Tiles, early/tag components, excitatory mask, scaling factors and two factor groups
  (numpy draws: no per-shape compilation of random ops)."""
  rng = np.random.default_rng(seed)
  n = NUM_BLOCKS * t
  col = rng.integers(0, NUM_BLOCKS, (NUM_BLOCKS, k))
  if k > 1:
    col[0, 1] = col[0, 0]  # a repeated column
  shape = (NUM_BLOCKS, k, t, t)
  w = jnp.asarray(rng.uniform(0.05, 1.0, shape), w_dtype)
  early = jnp.asarray(0.05 * rng.standard_normal(shape), jnp.bfloat16)
  tag = jnp.asarray(rng.uniform(size=shape) < 0.3, jnp.bfloat16)
  exc = jnp.asarray(rng.uniform(size=n) < 0.8, jnp.float32)
  f = jnp.asarray(1.0 + 0.05 * rng.standard_normal((2, n)), jnp.float32)
  factor = lambda rows: jnp.asarray(rng.standard_normal((rows, n)), jnp.bfloat16)
  eprop = (factor(b), factor(b), jnp.asarray(rng.uniform(-0.1, 0.1, (NUM_BLOCKS, k)), jnp.float32))
  hebb = (factor(3 * b), jnp.asarray(0.02 * rng.standard_normal((3 * b, n)), jnp.bfloat16),
          None)  # unscaled: the factors carry the rate
  direct = (factor(8), factor(8), jnp.full((NUM_BLOCKS, k), 0.01))
  return jnp.asarray(col, jnp.int32), w, early, tag, exc, f, (eprop, hebb), (direct,)


# name: (SynapseRules, with direct groups, dW given instead of groups, block_t divisor,
#        Hebbian group scaled per tile too: two scaled groups)
SYNAPSE_VARIANTS = {
    "all": (plasticity.SynapseRules(w_max=0.9), True, False, 1, False),
    "half_rows_two_scaled": (plasticity.SynapseRules(w_max=0.9), True, False, 2, True),
    "no_tagging_no_scaling": (plasticity.SynapseRules(tagging=False, scaling=False, w_max=0.9),
                              False, False, 1, False),
    "dw_given_f32": (plasticity.SynapseRules(stochastic_round=False, w_max=0.9), True, True, 1,
                     False),
}


# Every variant once and every shape at least once (interpret mode runs each program apart).
SYNAPSE_CASES = [("all", 16, 8, 16), ("all", 128, 1, 1), ("half_rows_two_scaled", 32, 4, 3),
                 ("no_tagging_no_scaling", 32, 4, 3), ("dw_given_f32", 16, 4, 16)]


@pytest.mark.parametrize("variant,t,k,b", SYNAPSE_CASES,
                         ids=[f"{v}-T{t}-K{k}-B{b}" for v, t, k, b in SYNAPSE_CASES])
def test_synapse_update_matches_reference(interpret, variant, t, k, b):
  check_synapse_update(interpret, variant, t, k, b, "triton")


# The Mosaic GPU backend (T = 128 only): B = 40 pads the e-prop group to one 128-row step and
# the Hebbian group (3B = 120 rows) to another; the given dW adds to the kernel's.
MOSAIC_SYNAPSE_CASES = [("all", 128, 2, 40), ("dw_given_f32", 128, 2, 40),
                        ("half_rows_two_scaled", 128, 2, 50)]


@pytest.mark.parametrize("variant,t,k,b", MOSAIC_SYNAPSE_CASES,
                         ids=[f"{v}-T{t}-K{k}-B{b}" for v, t, k, b in MOSAIC_SYNAPSE_CASES])
def test_synapse_update_mosaic_gpu_matches_reference(interpret, variant, t, k, b):
  if not interpret and not mosaic.is_hopper():
    pytest.skip("the mosaic_gpu synapse backend is Hopper-only (wgmma)")
  check_synapse_update(interpret, variant, t, k, b, "mosaic_gpu")


def check_synapse_update(interpret, variant, t, k, b, backend):
  """`synapse_update` with `backend` against `synapse_update_reference` on one case."""
  rules, with_direct, dw_given, rows_div, hebb_scaled = SYNAPSE_VARIANTS[variant]
  w_dtype = jnp.bfloat16 if rules.stochastic_round else jnp.float32
  col, w, early, tag, exc, f, groups, direct = synapse_inputs(40 + t + k, t, k, b, w_dtype)
  if hebb_scaled:
    groups = (groups[0], (*groups[1][:2], jnp.linspace(0.5, 2.0, NUM_BLOCKS * k).reshape(-1, k)))
  if not rules.tagging:
    early = tag = jnp.zeros((0, 0, 0, 0), jnp.bfloat16)
  dw = None
  if dw_given:
    dw = jnp.asarray(0.05 * np.random.default_rng(41).standard_normal(w.shape), jnp.float32)
    groups = groups[:1]
  args = (w, early, tag, col, exc, f, groups, direct if with_direct else (), dw, 0.3, 0.5,
          jnp.int32(123), rules)
  block_t = t // rows_div
  ref = plasticity.synapse_update_reference(*args, block_t=block_t)
  out = plasticity.synapse_update(*args, block_t=block_t, backend=backend, interpret=interpret)
  precision = "float32" if interpret else "tf32"
  # The new weights: in [0, w_max], moved, and equal to the reference's up to the GEMMs'
  # summation order (1 bf16 ulp where the rounding lands on the other side).
  assert out[0].dtype == w.dtype and out[0].shape == w.shape
  assert_close(out[0], ref[0], "bfloat16", 1)
  # (stochastic rounding may land one bf16 step above w_max)
  assert float(jnp.min(out[0])) >= 0.0 and float(jnp.max(out[0])) <= 0.9 * (1 + 2.0**-7)
  assert bool(jnp.all(jnp.any(out[0] != w, axis=(2, 3)))), "some tile was not updated"
  if rules.tagging:
    assert_close(out[1], ref[1], "bfloat16", 1)
    # Tags: 1 where |dW| crossed the threshold, else the old tag decayed; only a |dW| within
    # rounding of the threshold may differ.
    agree = float(jnp.mean((out[2] == ref[2]).astype(jnp.float32)))
    assert agree >= 0.999, f"tags agree on {agree:.4f} of synapses"
    assert set(np.unique(np.asarray(out[2], np.float32))) <= {0.0, 0.80078125, 1.0}
    assert float(jnp.mean(out[2] > 0.9)) > 0.005  # strong updates set new tags
  for name, got, want in zip(plasticity.SynapseStats._fields, out[3], ref[3]):
    assert got.shape == (NUM_BLOCKS, k, t // (block_t or t), t), name
    assert_close(got, want, precision, t * b, factor=16.0)
  if not rules.tagging:
    assert float(jnp.max(jnp.abs(out[3].tags))) == 0.0


def test_synapse_update_rules_by_hand():
  """The reference against each rule written out on one synapse block (T = 16, K = 1)."""
  col, w, early, tag, exc, f, groups, direct = synapse_inputs(42, 16, 1, 4)
  rules = plasticity.SynapseRules(stochastic_round=False, early_decay=0.9, tag_decay=0.5, w_max=0.9)
  w = w.astype(jnp.float32)
  new_w, new_early, new_tag, sums = plasticity.synapse_update_reference(
      w, early, tag, col, exc, f, groups, direct, None, 0.3, 0.5, 0, rules)
  outer = lambda g: np.asarray(plasticity.tile_outer_reference(g[0], g[1], col, 16)) * (
      1.0 if g[2] is None else np.asarray(g[2])[:, :, None, None])
  dw = outer(groups[0]) + outer(groups[1])
  e0, t0 = np.asarray(early, np.float32), np.asarray(tag, np.float32)
  e1 = 0.9 * e0 + dw
  tag1 = np.maximum(0.5 * t0, (np.abs(dw) > 0.3).astype(np.float32))
  e2 = e1 - 0.5 * tag1 * e1
  exc_t = np.asarray(exc).reshape(-1, 16)[np.asarray(col)][..., None]
  f = np.asarray(f)
  scale = np.where(exc_t > 0, f[0].reshape(NUM_BLOCKS, 1, 1, 16), f[1].reshape(NUM_BLOCKS, 1, 1, 16))
  want = np.clip((np.asarray(w) - e0 + e1) * scale + outer(direct[0]), 0.0, 0.9)
  np.testing.assert_allclose(np.asarray(new_w), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new_early, np.float32), e2, rtol=1e-2, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(new_tag, np.float32), tag1)
  np.testing.assert_allclose(np.asarray(sums.exc).sum(), np.sum(want * (exc_t > 0)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sums.abs_dw).sum(), np.abs(dw).sum(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sums.captured).sum(), np.abs(0.5 * tag1 * e1).sum(), rtol=1e-5)


def test_hashed_stochastic_rounding_is_unbiased():
  # 1 + 2^-10 lies 1/8 of the way from bf16 1.0 to the next bf16 value, 1 + 2^-7.
  x = jnp.full((1 << 16,), 1.0 + 2.0**-10, jnp.float32)
  index = jnp.arange(x.size, dtype=jnp.int32)
  out = np.asarray(plasticity.round_bf16_hashed(x, index, jnp.int32(7)), np.float32)
  assert set(np.unique(out)) == {1.0, 1.0 + 2.0**-7}
  assert abs(float(np.mean(out == 1.0 + 2.0**-7)) - 0.125) < 0.005
  other = np.asarray(plasticity.round_bf16_hashed(x, index, jnp.int32(8)), np.float32)
  assert float(np.mean(out != other)) > 0.1  # another seed, other bits
  exact = jnp.asarray([0.5, 1.0, 3.0], jnp.float32)  # bf16 values are kept as they are
  np.testing.assert_array_equal(
      plasticity.round_bf16_hashed(exact, jnp.arange(3, dtype=jnp.int32), jnp.int32(1)), exact)


def test_grouped_outer_mosaic_gpu_matches_reference(interpret):
  """The Mosaic GPU dW kernel: a scaled group of 200 rows (two 128-row steps, the second
  part padding) and an unscaled one of 130; R = 4, K = 3: 12 tiles over 4 programs in
  interpret mode (each walks three), a repeated pre block among them."""
  if not interpret and not mosaic.is_hopper():
    pytest.skip("the mosaic_gpu synapse backend is Hopper-only (wgmma)")
  rng = np.random.default_rng(44)
  t, k = 128, 3
  col = rng.integers(0, NUM_BLOCKS, (NUM_BLOCKS, k))
  col[0, 1] = col[0, 0]
  col = jnp.asarray(col, jnp.int32)
  factor = lambda rows: jnp.asarray(rng.standard_normal((rows, NUM_BLOCKS * t)), jnp.bfloat16)
  groups = ((factor(200), factor(200), jnp.asarray(rng.uniform(-1, 1, (NUM_BLOCKS, k)),
                                                    jnp.float32)),
            (factor(130), factor(130), None))
  ref = plasticity._grouped_outer(groups, col, t)
  out = plasticity.grouped_outer(groups, col, t, interpret=interpret)
  assert out.shape == (NUM_BLOCKS, k, t, t) and out.dtype == jnp.float32
  # bfloat16 products summed in float32 (in another order): float32 rounding of 330 terms
  assert_close(out, ref, "float32", 330, factor=16.0)
  # each group really counts: without the second one the result moves by its full size
  alone = plasticity._grouped_outer(groups[:1], col, t)
  assert float(jnp.max(jnp.abs(out - alone))) > 10.0
  # A scaled group alone in one 128-row step (padded to two: see `_outer_call`), and two
  # scaled groups (the second in a launch of its own) beside an unscaled one.
  scale = lambda: jnp.asarray(rng.uniform(-1, 1, (NUM_BLOCKS, k)), jnp.float32)
  for gs in (((factor(100), factor(100), scale()),),
             ((factor(100), factor(100), scale()), (factor(60), factor(60), scale()),
              (factor(128), factor(128), None))):
    assert_close(plasticity.grouped_outer(gs, col, t, interpret=interpret),
                 plasticity._grouped_outer(gs, col, t), "float32", 300, factor=16.0)


def test_synapse_backend_choice_and_refusals(monkeypatch):
  col, w, early, tag, exc, f, groups, direct = synapse_inputs(45, 128, 2, 128)
  args = (w, early, tag, col, exc, f, groups, direct, None, 0.3, 0.5, 1, plasticity.SynapseRules())
  # Off Hopper (and in interpret mode, always) "auto" is Triton.
  assert plasticity.choose_synapse_backend(groups, 128) == (
      "mosaic_gpu" if mosaic.is_hopper() else "triton")
  assert plasticity.choose_synapse_backend(groups, 128, interpret=True) == "triton"
  monkeypatch.setattr(mosaic, "is_hopper", lambda: True)
  assert plasticity.choose_synapse_backend(groups, 128) == "mosaic_gpu"
  small = tuple((pre[:plasticity.OUTER_MIN_B - 1], post[:plasticity.OUTER_MIN_B - 1], s)
                for pre, post, s in groups)
  assert plasticity.choose_synapse_backend(small, 128) == "triton"  # mostly padding
  big = jax.ShapeDtypeStruct((plasticity.OUTER_MAX_B + 1, NUM_BLOCKS * 128), jnp.bfloat16)
  assert plasticity.choose_synapse_backend(((big, big, None),), 128) == "triton"
  edge = jax.ShapeDtypeStruct((plasticity.OUTER_MAX_B, NUM_BLOCKS * 128), jnp.bfloat16)
  assert plasticity.choose_synapse_backend(((edge, edge, None),), 128) == "mosaic_gpu"
  f32 = tuple((pre.astype(jnp.float32), post, s) for pre, post, s in groups)
  assert plasticity.choose_synapse_backend(f32, 128) == "triton"  # wgmma: bfloat16 factors
  assert plasticity.choose_synapse_backend(groups, 64) == "triton"  # tiles of 128 only
  assert plasticity.choose_synapse_backend((), 128) == "triton"  # no GEMM to run
  with pytest.raises(ValueError, match="takes bfloat16 factors"):
    plasticity.synapse_update(*args[:6], f32, *args[7:], backend="mosaic_gpu")
  monkeypatch.setattr(mosaic, "is_hopper", lambda: False)
  with pytest.raises(ValueError, match="needs a Hopper GPU"):
    plasticity.synapse_update(*args, backend="mosaic_gpu")
  with pytest.raises(ValueError, match="backend must be one of"):
    plasticity.synapse_update(*args, backend="cuda")
  with pytest.raises(ValueError, match="synapse_backend must be one of"):
    tiny_config(synapse_backend="cuda")


@pytest.mark.gpu
def test_learning_with_mosaic_gpu_synapse_update_matches_triton():
  """One learning chunk of a 128-neuron-tile brain at B = 128 on Pallas: the Mosaic GPU
  synapse backend gives the Triton one's weights (up to a bfloat16 step where the float32
  sums, taken in another order, round the other way) and loss."""
  if not mosaic.is_hopper():
    pytest.skip("the mosaic_gpu synapse backend is Hopper-only (wgmma)")
  from neurogen_jax import learning
  from neurogen_jax.plasticity import PlasticityConfig
  base = tiny_config(implementation="pallas", tile=128)
  pcfg = PlasticityConfig()
  opt = learning.make_optimizer(1e-3)
  toks = jax.random.randint(jax.random.PRNGKey(1), (128, 3), 0, base.vocab_size)
  runs = []
  for backend in ("triton", "mosaic_gpu"):
    cfg = base.replace(synapse_backend=backend)
    ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 128)
    ts, out = learning.train_chunk(ts, toks, toks, config=cfg, pcfg=pcfg, optimizer=opt)
    runs.append((ts, out))
  (ts_t, out_t), (ts_m, out_m) = runs
  w_t, w_m = (np.asarray(ts.params.tiles, np.float32) for ts in (ts_t, ts_m))
  w_0 = np.asarray(learning.init_train_state(base, pcfg, opt, jax.random.PRNGKey(0), 128)
                   .params.tiles, np.float32)
  assert np.mean(w_t != w_0) > 0.01, "the chunk did not move the weights"
  same = np.isclose(w_m, w_t, rtol=2.0**-7, atol=1e-6)
  assert np.mean(same) > 0.999, f"weights agree on {np.mean(same):.5f}"
  np.testing.assert_allclose(np.asarray(out_m.loss), np.asarray(out_t.loss), rtol=1e-3)


def test_synapse_update_rejects_bad_shapes():
  col, w, early, tag, exc, f, groups, direct = synapse_inputs(43, 16, 2, 2)
  rules = plasticity.SynapseRules()
  with pytest.raises(ValueError, match="block_t"):
    plasticity.synapse_update(w, early, tag, col, exc, f, groups, direct, None, 0.3, 0.5, 1, rules,
                              block_t=12, interpret=True)
  with pytest.raises(ValueError, match="exc_N"):
    plasticity.synapse_update(w, early, tag, col, exc[:-1], f, groups, direct, None, 0.3, 0.5, 1,
                              rules, interpret=True)
  bad = ((groups[0][0][:, :-16], groups[0][1], groups[0][2]),)
  with pytest.raises(ValueError, match="factors"):
    plasticity.synapse_update(w, early, tag, col, exc, f, bad, direct, None, 0.3, 0.5, 1, rules,
                              interpret=True)


# ------------------------------------------------------------------------------- neurons


def alif_inputs(seed: int, b: int, n: int):
  keys = jax.random.split(jax.random.key(seed), 6)
  v = jax.random.uniform(keys[0], (b, n), minval=-0.5, maxval=1.5)
  i = jax.random.normal(keys[1], (b, n))
  a = jax.random.uniform(keys[2], (b, n), maxval=0.5)
  tr = jax.random.uniform(keys[3], (b, n))
  cur = 0.5 * jax.random.normal(keys[4], (b, n))
  theta = jax.random.uniform(keys[5], (n,), minval=-0.1, maxval=0.2)
  return v, i, a, tr, cur, theta


@pytest.mark.parametrize("b,n", [(1, 64), (3, 48), (16, 4096), (6, 1536)])
def test_alif_update_matches_reference(interpret, b, n):
  args = alif_inputs(16, b, n)
  out = neuron_update.alif_update(*args, **ALIF, interpret=interpret)
  ref = neuron_update.alif_update_reference(*args, **ALIF)
  names = ("v", "i", "a", "tr", "s", "x")
  x_ref = ref[5]
  firm = jnp.abs(x_ref) > 1e-5  # away from threshold the spike decision must agree exactly
  assert bool(jnp.all(jnp.where(firm, out[4] == ref[4], True))), "spikes differ"
  rate = float(jnp.mean(ref[4]))
  assert 0.05 < rate < 0.95, f"test inputs should spike sometimes, rate {rate}"
  for o, r, name in zip(out, ref, names):
    assert o.shape == (b, n) and o.dtype == jnp.float32, name
    assert_close(jnp.where(firm, o, r), r, "float32", 16)


def test_alif_update_in_place_keeps_the_callers_arrays(interpret):
  """The in-place (aliased) buffers never change the caller's arrays, also under jit
  where XLA may donate them, and the jitted op gives what the plain call gives."""
  args = alif_inputs(21, 4, 256)
  before = [np.asarray(z).copy() for z in args]
  plain = neuron_update.alif_update(*args, **ALIF, interpret=interpret)
  jitted = jax.jit(functools.partial(neuron_update.alif_update, **ALIF, interpret=interpret))(*args)
  for got, want in zip(jitted, plain):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for z, b in zip(args, before):
    np.testing.assert_array_equal(np.asarray(z), b)


def test_alif_grads_match_reference(interpret):
  args = alif_inputs(17, 3, 256)
  probes = [jax.random.normal(k, (3, 256)) for k in jax.random.split(jax.random.key(18), 6)]

  def loss(fn):
    return lambda *a: sum(jnp.sum(o * p) for o, p in zip(fn(*a, **ALIF), probes))

  pallas_fn = lambda *a, **kw: neuron_update.alif_update(*a, **kw, interpret=interpret)
  got = jax.grad(loss(pallas_fn), argnums=tuple(range(6)))(*args)
  want = jax.grad(loss(neuron_update.alif_update_reference), argnums=tuple(range(6)))(*args)
  for g, w in zip(got, want):
    assert_close(g, w, "float32", 16)
  # The surrogate reaches the inputs: d loss / d cur is nonzero where |x| < width.
  assert float(jnp.max(jnp.abs(got[4]))) > 0


def test_alif_reference_is_neurons_alif_step():
  """The kernel's reference computes exactly `neurons.alif_step` (values and grads)."""
  cfg = BrainConfig()
  consts = dict(a_s=cfg.decay(cfg.tau_syn_ms), a_m=cfg.decay(cfg.tau_mem_ms),
                a_a=cfg.decay(cfg.tau_adapt_ms), a_t=cfg.decay(cfg.tau_trace_ms),
                beta=cfg.adapt_beta, threshold=cfg.threshold, width=cfg.surrogate_width)
  v, i, a, tr, cur, theta = alif_inputs(19, 2, 128)
  st = NeuronState(v=v, i=i, a=a, tr=tr, s=jnp.zeros_like(v))
  new, x = alif_step(cfg, st, cur, theta)
  ref = neuron_update.alif_update_reference(v, i, a, tr, cur, theta, **consts)
  for got, want in zip((new.v, new.i, new.a, new.tr, new.s, x), ref):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  g_step = jax.grad(lambda c: jnp.sum(alif_step(cfg, st, c, theta)[0].tr))(cur)
  g_ref = jax.grad(lambda c: jnp.sum(neuron_update.alif_update_reference(
      v, i, a, tr, c, theta, **consts)[3]))(cur)
  np.testing.assert_array_equal(np.asarray(g_step), np.asarray(g_ref))


def tick_inputs(seed, b, n, collect):
  """alif_tick's inputs: state, prop, drive, gate_B, vec_6xN, read (and post, spikes)."""
  v, i, a, tr, cur, theta = alif_inputs(seed, b, n)
  prop = 2.0 * cur  # the gate (0.2-1.8) scales a fifth of it: keep the rate well above zero
  keys = jax.random.split(jax.random.key(seed + 1000), 6)
  drive = jax.random.normal(keys[0], (b, n)) * (jnp.arange(n) < n // 3)  # input neurons only
  gate = jax.random.uniform(keys[1], (b,), minval=0.2, maxval=1.8)
  mask = (jnp.arange(n) % 5 == 0).astype(jnp.float32)
  gain = jax.random.uniform(keys[2], (n,))
  read_w = jnp.full((n,), 0.7)
  learn = (jnp.arange(n) % 3 != 0).astype(jnp.float32)
  sign = jnp.where(jnp.arange(n) % 4 == 1, -1.0, 1.0)
  vec = jnp.stack([theta, mask, gain, read_w, learn, sign])
  read = jax.random.uniform(keys[3], (b, n))
  extra = ()
  if collect:
    extra = (jax.random.uniform(keys[4], (b, n)).astype(jnp.bfloat16),
             jax.random.randint(keys[5], (b, n), 0, 5).astype(jnp.bfloat16))
  return (v, i, a, tr, prop, drive, gate, vec, read) + extra


@pytest.mark.parametrize("collect", [False, True])
@pytest.mark.parametrize("b,n", [(1, 64), (3, 48), (16, 4096)])
def test_alif_tick_matches_reference(interpret, b, n, collect):
  args = tick_inputs(31, b, n, collect)
  out = neuron_update.alif_tick(*args, **ALIF, interpret=interpret)
  ref = neuron_update.alif_tick_reference(*args, **ALIF)
  assert len(out) == len(ref) == (9 if collect else 7)
  # Where the reference sits at the threshold a rounding difference may flip the spike.
  cur = args[4] * jnp.where(args[7][1] > 0, args[6][:, None], 1.0) + args[5] * args[7][2]
  x_ref = neuron_update.alif_update_reference(*args[:4], cur, args[7][0], **ALIF)[5]
  firm = jnp.abs(x_ref) > 1e-5
  assert bool(jnp.all(jnp.where(firm, out[4] == ref[4], True))), "spikes differ"
  assert 0.05 < float(jnp.mean(ref[4])) < 0.95
  # q is the signed spike in bfloat16: both signs occur, and |q| is the spike.
  assert out[5].dtype == jnp.bfloat16 and float(jnp.min(ref[5])) == -1.0 == -float(jnp.max(ref[5]))
  np.testing.assert_array_equal(np.abs(np.asarray(out[5], np.float32)), np.asarray(out[4]))
  for o, r in zip(out, ref):
    assert o.shape == (b, n) and o.dtype == r.dtype
    tol = "bfloat16" if r.dtype == jnp.bfloat16 else "float32"
    assert_close(jnp.where(firm, o.astype(jnp.float32), r.astype(jnp.float32)),
                 r.astype(jnp.float32), tol, 16)


@pytest.mark.parametrize("b,n", [(3, 48), (16, 4096)])
def test_alif_tick_bfloat16_state_matches_reference_and_float32(interpret, b, n):
  """State stored in bfloat16 (`BrainConfig.state_dtype`): computed in float32, returned in
  bfloat16 by the kernel and the reference alike, and one bfloat16 rounding away from the
  float32 tick of the same (bfloat16-representable) state."""
  args = tick_inputs(37, b, n, True)
  state16 = tuple(z.astype(jnp.bfloat16) for z in args[:4])
  args32 = tuple(z.astype(jnp.float32) for z in state16) + args[4:]
  out = neuron_update.alif_tick(*state16, *args[4:], **ALIF, interpret=interpret)
  ref = neuron_update.alif_tick_reference(*state16, *args[4:], **ALIF)
  f32 = neuron_update.alif_tick_reference(*args32, **ALIF)
  assert [o.dtype for o in out[:5]] == [jnp.bfloat16] * 4 + [jnp.float32]
  assert [r.dtype for r in ref[:4]] == [jnp.bfloat16] * 4
  cur = args[4] * jnp.where(args[7][1] > 0, args[6][:, None], 1.0) + args[5] * args[7][2]
  x_ref = neuron_update.alif_update_reference(*args32[:4], cur, args[7][0], **ALIF)[5]
  firm = jnp.abs(x_ref) > 1e-5
  assert 0.05 < float(jnp.mean(f32[4])) < 0.95
  for k, (o, r, w) in enumerate(zip(out, ref, f32)):
    # The state within a bfloat16 rounding of the reference (the kernel's float32 may differ
    # in the last bit) and of the float32 tick; the rest (s, q, sums) as with float32
    # state, since they use the float32 values before the state is stored: each output
    # within the rounding of its own dtype (post and spikes are bfloat16 sums).
    tol = "bfloat16" if k < 4 or o.dtype == jnp.bfloat16 else "float32"
    o, r, w = (jnp.where(firm, z.astype(jnp.float32), w.astype(jnp.float32)) for z in (o, r, w))
    assert_close(o, r, tol, 16)
    assert_close(o, w, tol, 16)
  with pytest.raises(ValueError, match="v, i, a, tr must share one dtype"):
    neuron_update.alif_tick(state16[0], *args32[1:4], *args[4:], **ALIF, interpret=interpret)


@pytest.mark.parametrize("b,n", [(3, 48), (16, 4096)])
def test_alif_tick_bfloat16_current_and_int8_spikes(interpret, b, n):
  """The lean tick I/O (`BrainConfig.current_dtype`, `spike_dtype`): prop read in
  bfloat16 and q written in int8 give the reference's outputs on the same inputs, and
  the outputs of the float32-current tick given the same (bfloat16-representable) current."""
  args = tick_inputs(39, b, n, True)
  prop16 = args[4].astype(jnp.bfloat16)
  lean = args[:4] + (prop16,) + args[5:]
  kw = dict(ALIF, signed_dtype=jnp.int8, write_s=False)
  out = neuron_update.alif_tick(*lean, **kw, interpret=interpret)
  ref = neuron_update.alif_tick_reference(*lean, **kw)
  f32 = neuron_update.alif_tick_reference(*args[:4], prop16.astype(jnp.float32), *args[5:],
                                          **ALIF)
  assert out[4] is None and out[5].dtype == jnp.int8 and ref[5].dtype == jnp.int8
  cur = args[4] * jnp.where(args[7][1] > 0, args[6][:, None], 1.0) + args[5] * args[7][2]
  x_ref = neuron_update.alif_update_reference(*args[:4], cur, args[7][0], **ALIF)[5]
  firm = jnp.abs(x_ref) > 1e-2  # the bfloat16 current moves x by up to ~2^-8 of it
  q = np.asarray(out[5])
  assert set(np.unique(q)) == {-1, 0, 1}
  np.testing.assert_array_equal(np.where(firm, q, 0), np.where(firm, np.asarray(ref[5]), 0))
  # With the same (bfloat16-representable) current, float32 prop gives the same tick.
  np.testing.assert_array_equal(np.where(firm, q, 0),
                                np.where(firm, np.asarray(f32[5], np.float32), 0))
  for k in (0, 1, 2, 3, 6, 7, 8):
    o, r, w = (jnp.where(firm, z[k].astype(jnp.float32), f32[k].astype(jnp.float32))
               for z in (out, ref, f32))
    tol = "bfloat16" if out[k].dtype == jnp.bfloat16 else "float32"
    assert_close(o, r, tol, 16)
    assert_close(o, w, tol, 16)
  with pytest.raises(ValueError, match="prop must be float32 or bfloat16"):
    neuron_update.alif_tick(*args[:4], args[4].astype(jnp.float16), *args[5:], **ALIF,
                            interpret=interpret)


def test_alif_tick_reference_is_the_unfused_tick():
  """The fused reference equals: compose the current, alif_update_reference, accumulate."""
  args = tick_inputs(32, 4, 256, True)
  v, i, a, tr, prop, drive, gate, vec, read, post, spk = args
  got = neuron_update.alif_tick_reference(*args, **ALIF)
  cur = prop * jnp.where(vec[1] > 0, gate[:, None], 1.0) + drive * vec[2]
  nv, ni, na, ntr, ns, x = neuron_update.alif_update_reference(v, i, a, tr, cur, vec[0], **ALIF)
  want = (nv, ni, na, ntr, ns, (ns * vec[5]).astype(jnp.bfloat16), read + ntr * vec[3],
          (post + neuron_update.pseudo_derivative(x, ALIF["width"]) * vec[4]).astype(jnp.bfloat16),
          (spk + ns).astype(jnp.bfloat16))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)))
  # The sums moved: the test would not pass with accumulators left alone.
  assert float(jnp.max(jnp.abs(got[6] - read))) > 0.1
  assert float(jnp.sum(got[8].astype(jnp.float32) - spk.astype(jnp.float32))) > 0


def test_alif_tick_grads_match_reference(interpret):
  args = tick_inputs(33, 3, 256, False)
  probes = [jax.random.normal(k, (3, 256)) for k in jax.random.split(jax.random.key(34), 7)]

  def loss(fn):
    return lambda *a: sum(jnp.sum(o.astype(jnp.float32) * p)
                          for o, p in zip(fn(*a, **ALIF), probes))

  pallas_fn = lambda *a, **kw: neuron_update.alif_tick(*a, **kw, interpret=interpret)
  argnums = tuple(range(9))
  got = jax.grad(loss(pallas_fn), argnums=argnums)(*args)
  want = jax.grad(loss(neuron_update.alif_tick_reference), argnums=argnums)(*args)
  for g, w in zip(got, want):
    assert_close(g, w, "float32", 16)
  assert float(jnp.max(jnp.abs(got[4]))) > 0 and float(jnp.max(jnp.abs(got[6]))) > 0


@pytest.mark.parametrize("k_parts", [4, 3])
def test_alif_tick_adds_up_partial_propagation(interpret, k_parts):
  """One stream: prop given as K partial sums [K, N] (the event kernel's, partials=True)
  gives the tick of their sum, kernel and reference (K = 3: padded to 4 zero rows); the
  grads of the partials are the grad of the sum, for each of them."""
  args = list(tick_inputs(36, 1, 256, True))
  parts = jax.random.normal(jax.random.key(37), (k_parts, 256)) * 2.0
  summed = list(args)
  summed[4] = jnp.sum(parts, axis=0, keepdims=True)
  args[4] = parts
  want = neuron_update.alif_tick_reference(*summed, **ALIF)
  assert 0.05 < float(jnp.mean(want[4])) < 0.95
  for fn in (functools.partial(neuron_update.alif_tick, interpret=interpret),
             neuron_update.alif_tick_reference):
    got = fn(*args, **ALIF)
    for g, w in zip(got, want, strict=True):
      assert g.shape == w.shape == (1, 256)
      assert_close(g.astype(jnp.float32), w.astype(jnp.float32),
                   "bfloat16" if w.dtype == jnp.bfloat16 else "float32", k_parts)
  probe = jax.random.normal(jax.random.key(38), (1, 256))
  loss = lambda p4: jnp.sum(neuron_update.alif_tick(*args[:4], p4, *args[5:], **ALIF,
                                                    interpret=interpret)[6] * probe)
  g_parts = jax.grad(loss)(parts)
  g_sum = jax.grad(lambda p: jnp.sum(neuron_update.alif_tick_reference(
      *summed[:4], p, *summed[5:], **ALIF)[6] * probe))(summed[4])
  assert float(jnp.max(jnp.abs(g_sum))) > 0
  for k in range(k_parts):
    assert_close(g_parts[k:k + 1], g_sum, "float32", 16)


@pytest.mark.parametrize("b,n,collect", [(1, 64, False), (3, 48, True), (16, 4096, False)])
def test_alif_tick_counts_spikes_per_group(interpret, b, n, collect):
  """With group_N the tick also returns its spikes per group: equal to counting s by hand
  (n = 48 is padded: the padding counts nowhere; group 5 is empty, and a group id >= G
  counts nowhere); the other outputs do not change; grads go through the counts."""
  args = tick_inputs(39, b, n, collect)
  n_groups = 6
  group_N = (jnp.arange(n) * 7 // n) % 7  # 0..6 in runs; 6 is outside [0, 6)
  group_N = jnp.where(group_N == 5, 6, group_N)
  kw = dict(**ALIF, n_groups=n_groups)
  for fn in (functools.partial(neuron_update.alif_tick, interpret=interpret),
             neuron_update.alif_tick_reference):
    out = fn(*args, group_N=group_N, **kw)
    plain = fn(*args, **ALIF)
    assert len(out) == len(plain) + 1
    for o, p_ in zip(out[:-1], plain, strict=True):
      np.testing.assert_array_equal(np.asarray(o.astype(jnp.float32)),
                                    np.asarray(p_.astype(jnp.float32)))
    s = np.asarray(out[4])
    want = np.stack([(s * (np.asarray(group_N) == g)).sum(axis=1) for g in range(n_groups)], 1)
    assert out[-1].shape == (b, n_groups) and out[-1].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out[-1]), want)
    assert want[:, 5].sum() == 0 and want.sum() > 0 and want.sum() < s.sum()
  probe = jax.random.normal(jax.random.key(40), (b, n_groups))
  loss = lambda fn: lambda p4: jnp.sum(fn(*args[:4], p4, *args[5:], group_N=group_N,
                                          **kw)[-1] * probe)
  got = jax.grad(loss(functools.partial(neuron_update.alif_tick, interpret=interpret)))(args[4])
  want = jax.grad(loss(neuron_update.alif_tick_reference))(args[4])
  assert float(jnp.max(jnp.abs(want))) > 0
  assert_close(got, want, "float32", 16)


@pytest.mark.parametrize("b,count_by_block", [(4, True), (16, True), (16, False)])
def test_alif_tick_counts_groups_that_span_whole_blocks(interpret, monkeypatch, b, count_by_block):
  """The brain's groups (areas) span whole kernel blocks: with B >= _FLAGS_MIN_B such a
  block counts its spikes with one row sum, a block across groups (and every block below
  _FLAGS_MIN_B streams) with the one-hot sums. Both kinds in one call
  (n = 8,192 in blocks of 1,024: groups 0, 1, 2 on whole blocks, then a block split between
  groups 3 and 4, a padded-out group id -1 and an empty group 5): the counts equal counting
  s by hand, and the switch that forces the one-hot sums everywhere gives the same."""
  monkeypatch.setattr(neuron_update, "_COUNT_BY_BLOCK", count_by_block)
  monkeypatch.setattr(neuron_update, "_FLAGS_MIN_B", 16)  # (the flags' path at a small B)
  n, n_groups = 8192, 6
  _, _, block_n = neuron_update._layout(b, n)
  assert block_n == 1024
  blocks = jnp.arange(n) // block_n
  group_N = jnp.select([blocks < 3, blocks == 3, blocks == 4],
                       [blocks, jnp.where(jnp.arange(n) % block_n < 300, 3, 4), -1], 2)
  args = tick_inputs(41, b, n, True)
  out = neuron_update.alif_tick(*args, group_N=group_N, n_groups=n_groups, **ALIF,
                                interpret=interpret)
  s, g = np.asarray(out[4]), np.asarray(group_N)
  want = np.stack([(s * (g == k)).sum(axis=1) for k in range(n_groups)], 1)
  assert want[:, :5].min() > 0 and want[:, 5].sum() == 0  # every real group spiked
  np.testing.assert_array_equal(np.asarray(out[-1]), want)
  ref = neuron_update.alif_tick_reference(*args, group_N=group_N, n_groups=n_groups, **ALIF)
  np.testing.assert_array_equal(np.asarray(ref[-1]), want)


@pytest.mark.parametrize("b,n", [(1, 64), (3, 48), (16, 4096)])
def test_alif_tick_skips_undriven_blocks_unread_sums_and_s(interpret, b, n):
  """A tick whose read weight is zero leaves the read sum as it was (the kernel neither
  loads nor stores it: the aliased buffer keeps it), blocks with zero drive gain take no
  drive (the kernel does not load it), and write_s=False returns None for s, with
  s = q * sign; everything else equals the reference's."""
  args = list(tick_inputs(41, b, n, True))
  vec = args[7]
  vec = vec.at[neuron_update.TICK_VEC_ROWS.index("read")].set(0.0)
  vec = vec.at[neuron_update.TICK_VEC_ROWS.index("gain"), n // 4:].set(0.0)  # whole kernel blocks at n = 4096
  args[7] = vec
  want = neuron_update.alif_tick_reference(*args, **ALIF)
  np.testing.assert_array_equal(np.asarray(want[6]), np.asarray(args[8]))
  for fn in (functools.partial(neuron_update.alif_tick, interpret=interpret),
             neuron_update.alif_tick_reference):
    full = fn(*args, **ALIF)
    lean = fn(*args, **ALIF, write_s=False)
    assert lean[4] is None and len(lean) == len(full)
    np.testing.assert_array_equal(np.asarray(full[6]), np.asarray(args[8]))  # read untouched
    s_from_q = np.asarray(lean[5], np.float32) * np.asarray(vec[neuron_update.TICK_VEC_ROWS.index("sign")])
    np.testing.assert_array_equal(s_from_q, np.asarray(full[4]))
    for k, (o, w) in enumerate(zip(full, want, strict=True)):
      assert_close(o.astype(jnp.float32), w.astype(jnp.float32),
                   "bfloat16" if w.dtype == jnp.bfloat16 else "float32", 16)
      if k != 4:
        np.testing.assert_array_equal(np.asarray(lean[k].astype(jnp.float32)),
                                      np.asarray(o.astype(jnp.float32)))
  assert 0.05 < float(jnp.mean(want[4])) < 0.95
  # The drive reached the driven neurons only: zero it where the gain is zero and nothing
  # changes; zero it everywhere and the driven quarter changes.
  quiet = list(args)
  quiet[5] = args[5].at[:, n // 4:].set(0.0)
  got = neuron_update.alif_tick(*quiet, **ALIF, interpret=interpret)
  np.testing.assert_array_equal(np.asarray(got[1]),
                                np.asarray(neuron_update.alif_tick(*args, **ALIF,
                                                                   interpret=interpret)[1]))
  quiet[5] = jnp.zeros_like(args[5])
  moved = neuron_update.alif_tick(*quiet, **ALIF, interpret=interpret)[1] - got[1]
  assert float(jnp.max(jnp.abs(moved[:, :n // 4]))) > 0.01


@pytest.mark.parametrize("b,n", [(2, 64), (16, 4096)])
def test_alif_tick_brain_dtypes_and_per_neuron_read_weights(interpret, b, n):
  """As the brain calls it: bfloat16 spike counts (whole numbers), a bfloat16 drive (read
  as it is, no float32 copy) and a read weight that is zero outside the read areas (here
  the second half: whole kernel blocks at n = 4,096). The read sum there stays as it was
  (not loaded, not stored), the first half accumulates; every output equals the
  reference's and the counts go up by exactly the spikes."""
  args = list(tick_inputs(41, b, n, True))
  read_row = neuron_update.TICK_VEC_ROWS.index("read")
  args[7] = args[7].at[read_row, n // 2:].set(0.0)
  args[5] = args[5].astype(jnp.bfloat16)
  want = neuron_update.alif_tick_reference(*args, **ALIF)
  got = neuron_update.alif_tick(*args, **ALIF, interpret=interpret)
  assert got[8].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got[8], np.float32), np.asarray(want[8], np.float32))
  np.testing.assert_array_equal(np.asarray(got[8], np.float32) - np.asarray(args[10], np.float32),
                                np.asarray(got[4]))
  assert 0.05 < float(jnp.mean(got[4])) < 0.95
  np.testing.assert_array_equal(np.asarray(got[6][:, n // 2:]), np.asarray(args[8][:, n // 2:]))
  assert float(jnp.mean(got[6][:, :n // 2] - args[8][:, :n // 2])) > 0.01
  for o, w in zip(got, want, strict=True):
    assert o.dtype == w.dtype
    assert_close(o.astype(jnp.float32), w.astype(jnp.float32),
                 "bfloat16" if w.dtype == jnp.bfloat16 else "float32", 16)
  # The bfloat16 drive is the float32 drive rounded: the same tick as from that.
  rounded = list(args)
  rounded[5] = args[5].astype(jnp.float32)
  same = neuron_update.alif_tick(*rounded, **ALIF, interpret=interpret)
  for o, w in zip(got, same, strict=True):
    np.testing.assert_array_equal(np.asarray(o.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)))


def _phase_vecs(vec_6xN, n):
  """Three phases' rows from one: drive gain zero beyond the first quarter (whole kernel
  blocks at n = 8,192), then no read weight, then both and a new theta."""
  rows = neuron_update.TICK_VEC_ROWS
  gain, read, theta = rows.index("gain"), rows.index("read"), rows.index("theta")
  quarter = vec_6xN.at[gain, n // 4:].set(0.0)
  unread = vec_6xN.at[read].set(0.0)
  both = quarter.at[read].set(0.0).at[theta].add(0.05)
  return jnp.stack([quarter, unread, both])


@pytest.mark.parametrize("b,n,partials,lay_out", [
    (1, 8192, True, True), (4, 8192, False, True), (3, 48, False, True), (1, 8192, True, False),
    (4, 8192, False, False)])
def test_alif_tick_takes_every_phases_rows_laid_out_once(interpret, b, n, partials, lay_out):
  """`tick_rows` lays out every phase's rows once (padded, with the groups and each block's
  flags); `.at(p)` in place of phase p's [6, N] rows gives the same tick bit for bit, in
  the kernel (which then reads the phase and the precomputed flags: here at small B too,
  with _FLAGS_MIN_B lowered, where the kernel given [6, N] rows reduces them itself) and in
  the reference; with one stream through the propagation's K partial sums too. Rows not
  laid out (lay_out False: `ops.tick_rows`' XLA form) are laid out by the kernel each tick:
  the same again. n = 8,192: blocks of 1,024, groups on whole blocks and one block split
  between two; n = 48: padded."""
  args = list(tick_inputs(43, b, n, True))
  if partials:  # B = 1: the event kernel's K partial sums
    args[4] = jnp.stack([args[4][0] * 0.25] * 4)
  vec_Px6xN = _phase_vecs(args[7], n)
  blocks = jnp.arange(n) // 1024
  group_N = jnp.where(blocks == 3, jnp.where(jnp.arange(n) % 1024 < 300, 3, 4), blocks % 3)
  kw = dict(**ALIF, n_groups=5, write_s=False)
  rows = (neuron_update.tick_rows(vec_Px6xN, group_N, 5, batch=b) if lay_out else
          neuron_update.PhaseRows(vec_Px6xN, None, jnp.zeros((), jnp.int32)))
  assert (rows.flags_PxFxNb is not None) == lay_out
  assert rows.vec_PxRxN.shape[:2] == (3, 8 if lay_out else 6)
  for p in range(3):
    args[7] = vec_Px6xN[p]
    plain = neuron_update.alif_tick(*args, group_N=group_N, **kw, interpret=interpret)
    want = neuron_update.alif_tick_reference(*args, group_N=group_N, **kw)
    args[7] = rows.at(p)
    laid = neuron_update.alif_tick(*args, group_N=group_N, **kw, interpret=interpret)
    ref = neuron_update.alif_tick_reference(*args, group_N=group_N, **kw)
    if p == 1:  # the phase with the whole drive
      assert 0.02 < float(jnp.mean(jnp.abs(want[5].astype(jnp.float32)))) < 0.95
    for o, q_, w, r in zip(laid, plain, want, ref, strict=True):
      if w is None:
        continue
      np.testing.assert_array_equal(np.asarray(o.astype(jnp.float32)),
                                    np.asarray(q_.astype(jnp.float32)))
      np.testing.assert_array_equal(np.asarray(r.astype(jnp.float32)),
                                    np.asarray(w.astype(jnp.float32)))
  # Phase 1 reads nothing: its read sums stay as they were; phase 0 drives a quarter only.
  np.testing.assert_array_equal(np.asarray(neuron_update.alif_tick(
      *args[:7], rows.at(1), *args[8:], group_N=group_N, **kw, interpret=interpret)[6]),
      np.asarray(args[8]))
  # Inside jit with a traced phase, as the brain's tick loop calls it.
  traced = jax.jit(lambda p: neuron_update.alif_tick(
      *args[:7], rows.at(p), *args[8:], group_N=group_N, **kw, interpret=interpret))(2)
  args[7] = vec_Px6xN[2]
  direct = neuron_update.alif_tick(*args, group_N=group_N, **kw, interpret=interpret)
  for o, w in zip(traced, direct, strict=True):
    if w is not None:
      np.testing.assert_array_equal(np.asarray(o.astype(jnp.float32)),
                                    np.asarray(w.astype(jnp.float32)))


def test_tick_rows_refuse_another_kernels_layout():
  """Rows laid out for the fused kernel's 128-neuron blocks do not fit the tick's blocks of
  1,024: a clear error, not wrong flags."""
  args = list(tick_inputs(44, 4, 8192, False))
  rows = neuron_update.tick_rows(args[7][None], batch=4, fused_tile=128)
  args[7] = rows.at(0)
  with pytest.raises(ValueError, match="laid out for another kernel"):
    neuron_update.alif_tick(*args, **ALIF, interpret=True)
  with pytest.raises(ValueError, match="rows per phase"):
    neuron_update.tick_rows(args[7].vec_PxRxN[:, :5], batch=4)
  with pytest.raises(ValueError, match="group_N with n_groups"):
    neuron_update.tick_rows(rows.vec_PxRxN[:, :6], jnp.zeros((8192,), jnp.int32), batch=4)


def test_alif_tick_bad_shapes():
  args = list(tick_inputs(35, 2, 64, True))
  with pytest.raises(ValueError, match="partial sums"):  # [K, N] partials need B = 1
    neuron_update.alif_tick(*args[:4], jnp.zeros((4, 64)), *args[5:], **ALIF, interpret=True)
  with pytest.raises(ValueError, match="both post_BxN and spikes_BxN"):
    neuron_update.alif_tick(*args[:10], **ALIF, interpret=True)
  with pytest.raises(ValueError, match="n_groups"):
    neuron_update.alif_tick(*args, group_N=jnp.zeros((64,), jnp.int32), **ALIF, interpret=True)
  with pytest.raises(ValueError, match="group_N of shape"):
    neuron_update.alif_tick(*args, group_N=jnp.zeros((63,), jnp.int32), n_groups=2, **ALIF,
                            interpret=True)
  args[7] = args[7][:5]
  with pytest.raises(ValueError, match="rows"):
    neuron_update.alif_tick(*args, **ALIF, interpret=True)


# -------------------------------------------------------------------------------- events


def test_build_fanout_inverts_col():
  col, _, _ = layout(20, 16, 8)
  rows, slots = events.build_fanout(col, NUM_BLOCKS)
  rows, slots, col = np.asarray(rows), np.asarray(slots), np.asarray(col)
  listed = set()
  for c in range(NUM_BLOCKS):
    for r, k in zip(rows[c], slots[c]):
      if r == NUM_BLOCKS:  # sentinel
        continue
      assert col[r, k] == c
      listed.add((int(r), int(k)))
  assert listed == {(r, k) for r in range(NUM_BLOCKS) for k in range(8)}
  assert rows.shape[1] == np.bincount(col.ravel(), minlength=NUM_BLOCKS).max()
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda c: events.build_fanout(c, NUM_BLOCKS))(col)


EVENT_BLOCKS = 32  # N = 32 * 32 = 1024 neurons for the event tests


@pytest.fixture(params=[pytest.param(True, id="skip"), pytest.param(False, id="masked")])
def skip_silent_chunks(request, monkeypatch):
  """Both ways the event kernels treat a chunk of silent rows: branched over (the default,
  8-row chunks) or loaded masked and summed in registers (16-row chunks here). The tests
  at several spike rates run the default only."""
  monkeypatch.setattr(events, "EVENTS_SKIP_SILENT_CHUNKS", request.param)
  monkeypatch.setattr(events, "EVENTS_CHUNK", 8 if request.param else 16)
  return request.param


def event_layout(seed):
  kc, kw, kg = jax.random.split(jax.random.key(seed), 3)
  col = jax.random.randint(kc, (EVENT_BLOCKS, 4), 0, EVENT_BLOCKS)
  w = flat_uniform(kw, (EVENT_BLOCKS, 4, 32, 32), minval=0.05).astype(jnp.bfloat16)
  gain = jax.random.uniform(kg, (EVENT_BLOCKS, 4), minval=-1.5, maxval=1.5)
  return col, w, gain


@pytest.mark.parametrize("rate", [0.005, 0.02, 0.05])
def test_propagate_events_matches_dense(interpret, rate):
  col, w, gain = event_layout(21)
  spk = spikes(22, (EVENT_BLOCKS * 32,), rate)
  ref = propagate.propagate_reference(spk[None], w, col, gain)[0]
  fanout = events.build_fanout(col, EVENT_BLOCKS)
  out_xla = events.propagate_events(spk, w, col, gain, fanout, max_events=128)
  assert_close(out_xla, ref, "float32", 4 * 32)
  for variant in events.EVENTS_VARIANTS:
    out_pallas = events.propagate_events_pallas(spk, w, col, gain, variant=variant,
                                                interpret=interpret)
    assert_close(out_pallas, ref, "float32", 4 * 32)


def test_propagate_events_partials_sum_to_the_propagation(interpret, skip_silent_chunks):
  """partials=True: the K per-tile terms [K, N] (each tile's own, `partials_reference`),
  whose sum is the propagation; their grads are each tile's own."""
  col, w, gain = event_layout(27)
  spk = spikes(28, (EVENT_BLOCKS * 32,), 0.05)
  parts = events.propagate_events_pallas(spk, w, col, gain, partials=True, interpret=interpret)
  want = events.partials_reference(spk, w, col, gain)
  assert parts.shape == (4, EVENT_BLOCKS * 32)
  assert_close(parts, want, "float32", 32)
  assert_close(jnp.sum(parts, axis=0), propagate.propagate_reference(spk[None], w, col, gain)[0],
               "float32", 4 * 32)
  assert float(jnp.min(jnp.max(jnp.abs(want), axis=1))) > 0  # every tile slot carries current
  probe = jax.random.normal(jax.random.key(29), parts.shape)
  loss = lambda fn: lambda s, ww, g: jnp.sum(fn(s, ww, g) * probe)
  got = jax.grad(loss(lambda s, ww, g: events.propagate_events_pallas(
      s, ww, col, g, partials=True, interpret=interpret)), argnums=(0, 1, 2))(
          spk.astype(jnp.float32), w, gain)
  ref = jax.grad(loss(lambda s, ww, g: events.partials_reference(s, ww, col, g)),
                 argnums=(0, 1, 2))(spk.astype(jnp.float32), w, gain)
  for g, r, tol in zip(got, ref, ("float32", "bfloat16", "float32")):
    assert_close(g, r, tol, 32)
  with pytest.raises(ValueError, match="partials"):
    events.propagate_events_pallas(spk, w, col, gain, variant="rows", partials=True,
                                   interpret=interpret)


def test_propagate_events_overflow_falls_back_to_dense():
  """More spikes than max_events: the dense path answers (marked here by an offset)."""
  col, w, gain = event_layout(23)
  spk = spikes(24, (EVENT_BLOCKS * 32,), 0.05)
  count = int(jnp.sum(spk != 0))
  ref = propagate.propagate_reference(spk[None], w, col, gain)[0]
  fanout = events.build_fanout(col, EVENT_BLOCKS)
  marked = lambda *a: propagate.propagate_reference(*a) + 1000.0
  run = jax.jit(lambda s, m: events.propagate_events(s, w, col, gain, fanout, m, dense=marked),
                static_argnums=1)
  np.testing.assert_allclose(run(spk, count), ref, rtol=1e-5, atol=1e-4)  # exactly full: events
  np.testing.assert_allclose(run(spk, count - 1), ref + 1000.0, rtol=1e-5, atol=1e-3)  # overflow
  # Through the default dense path the overflowing result is still the right one.
  out = events.propagate_events(spk, w, col, gain, fanout, max_events=count // 4)
  assert_close(out, ref, "float32", 4 * 32)


@pytest.mark.parametrize("variant", ["tiles", "rows", "atomic"])
def test_propagate_events_pallas_all_spiking(interpret, variant, skip_silent_chunks):
  """Every neuron spiking is exact too: there is no event cap. K = 4 tiles per post block
  with repeated columns (`layout`'s col[0, 1] == col[0, 0]): each variant sums them all."""
  col, w, gain = layout(25, 32, 4)
  spk = jnp.where(jax.random.uniform(jax.random.key(26), (NUM_BLOCKS * 32,)) < 0.5, 1.0, -1.0)
  ref = propagate.propagate_reference(spk[None], w, col, gain)[0]
  out = events.propagate_events_pallas(spk, w, col, gain, variant=variant, interpret=interpret)
  assert_close(out, ref, "float32", 4 * 32)
  with pytest.raises(ValueError, match="variant"):
    events.propagate_events_pallas(spk, w, col, gain, variant="warp", interpret=interpret)


def test_propagate_events_grads_match_dense(interpret):
  col, w, gain = event_layout(27)
  spk = spikes(28, (EVENT_BLOCKS * 32,), 0.03, jnp.float32)
  probe = jax.random.normal(jax.random.key(29), (EVENT_BLOCKS * 32,))
  fanout = events.build_fanout(col, EVENT_BLOCKS)
  dense = lambda s, ww, g: propagate.propagate_reference(s[None], ww, col, g)[0]
  xla = lambda s, ww, g: events.propagate_events(s, ww, col, g, fanout, 64)
  pallas = [functools.partial(lambda s, ww, g, v: events.propagate_events_pallas(
      s, ww, col, g, variant=v, interpret=interpret), v=v) for v in events.EVENTS_VARIANTS]
  grad = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * probe), argnums=(0, 1, 2))(spk, w, gain)
  want = grad(dense)
  # d spk and d w come out of bf16 products (spikes are cast to w's dtype); d gain is f32.
  precisions = ("bfloat16", "bfloat16", "float32" if interpret else "tf32")
  for fn in (xla, *pallas):
    for g, r, precision in zip(grad(fn), want, precisions):
      assert_close(g, r, precision, 4 * 32)


# ------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_ops_propagate_dispatch(implementation, b):
  if implementation == "pallas" and not _on_gpu():
    pytest.skip("ops dispatches compiled Pallas kernels (GPU); interpret mode is tested above")
  col, w, gain = event_layout(30)
  spk = spikes(31, (b, EVENT_BLOCKS * 32), 0.02)
  ref = propagate.propagate_reference(spk, w, col, gain)
  fanout = events.build_fanout(col, EVENT_BLOCKS)
  for variant in events.EVENTS_VARIANTS:  # used by "pallas" at B = 1 only
    out = ops.propagate(spk, w, col, gain, implementation, fanout=fanout, max_events=64,
                        events_variant=variant)
    assert out.shape == (b, EVENT_BLOCKS * 32)
    assert_close(out, ref, "float32", 4 * 32)


def test_ops_rejects_unknown_implementation_and_missing_fanout():
  col, w, gain = event_layout(32)
  spk = spikes(33, (1, EVENT_BLOCKS * 32), 0.02)
  with pytest.raises(ValueError, match="implementation"):
    ops.propagate(spk, w, col, gain, "triton")
  with pytest.raises(ValueError, match="build_fanout"):
    ops.propagate_events(spk[0], w, col, gain, "xla")
  # Without a fanout the xla dispatcher stays dense at B = 1.
  assert_close(ops.propagate(spk, w, col, gain, "xla"),
               propagate.propagate_reference(spk, w, col, gain), "float32", 1)


def test_ops_xla_matches_references():
  col, w, _ = layout(34, 16, 4)
  kp, kq = jax.random.split(jax.random.key(35))
  pre = jax.random.uniform(kp, (3, NUM_BLOCKS * 16))
  post = jax.random.normal(kq, (3, NUM_BLOCKS * 16))
  np.testing.assert_array_equal(ops.tile_outer(pre, post, col, 16),
                                plasticity.tile_outer_reference(pre, post, col, 16))
  np.testing.assert_array_equal(
      np.asarray(ops.tile_update(w, pre, post, col, 0.1, 0.0, 1.0), np.float32),
      np.asarray(plasticity.tile_update_reference(w, pre, post, col, 0.1, 0.0, 1.0), np.float32))
  args = alif_inputs(36, 2, 64)
  for got, want in zip(ops.alif_update(*args, **ALIF), neuron_update.alif_update_reference(*args, **ALIF)):
    np.testing.assert_array_equal(got, want)


def test_plasticity_apply_is_the_same_through_either_implementation(monkeypatch):
  """One token of every rule (replay included) through `ops.synapse_update`: the Pallas
  kernel (interpret mode off a GPU) and the XLA reference leave the same brain."""
  if not _on_gpu():
    monkeypatch.setattr(plasticity, "synapse_update",
                        functools.partial(plasticity.synapse_update, interpret=True))
  cfg = tiny_config(scale=1 / 128, fan_in_tiles=4)  # few tiles: interpret mode is slow
  pcfg = rules_module.PlasticityConfig(replay_every=1, replay_size=4, replay_batch=2)
  params, bstate = brain.init(cfg, jax.random.PRNGKey(3), batch=3)
  pstate = rules_module.init_plastic_state(cfg, pcfg)
  tok, tgt = jnp.array([5, 9, 77]), jnp.array([9, 77, 5])
  bstate, logits, aux = brain.cognitive_step(params, bstate, tok, cfg, collect=True)
  ce = -jax.nn.log_softmax(logits)[jnp.arange(3), tgt]
  pstate = pstate._replace(count=jnp.int32(3), update_scale=jnp.float32(1e-4),
                           protein=jnp.float32(1.0))  # tags and capture act
  apply = jax.jit(rules_module.apply, static_argnums=(0, 1))
  outs = [apply(cfg.replace(implementation=impl), pcfg, params, bstate, pstate, aux, logits, tgt,
                ce, tok)
          for impl in ("xla", "pallas")]
  (p_x, _, s_x, st_x, _), (p_p, _, s_p, st_p, _) = outs
  assert float(st_x["replayed"]) == 1.0 and float(st_x["tag_fraction"]) > 0
  assert float(st_x["captured"]) > 0 and float(jnp.mean(p_x.tiles != params.tiles)) > 0.5
  assert_close(p_p.tiles, p_x.tiles, "bfloat16", 1)
  assert_close(s_p.early_W, s_x.early_W, "bfloat16", 1)
  assert float(jnp.mean((s_p.tag_W == s_x.tag_W).astype(jnp.float32))) >= 0.999
  assert_close(s_p.in_mean_2xN, s_x.in_mean_2xN, "float32", cfg.fan_in_tiles * cfg.tile, 16.0)
  for key in ("tag_fraction", "captured", "tile_mean", "update_norm"):
    np.testing.assert_allclose(float(st_p[key]), float(st_x[key]), rtol=1e-3, err_msg=key)
