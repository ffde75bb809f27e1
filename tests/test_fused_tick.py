"""The propagation inside the neuron tick's kernel (`neuron_update.propagate_tick`,
`ops.propagate_tick`, `BrainConfig.fuse_propagation`).

The kernel against its reference (the float32 propagation, then the tick) and against the
unfused Pallas pair, in interpret mode on CPU and compiled on a GPU; its gradients; the
tiny brain with and without fusion; and the arguments it refuses.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, ops
from neurogen_jax.config import tiny_config
from neurogen_jax.pallas import neuron_update, propagate
from tests.test_pallas import ALIF, assert_close, interpret, layout, spikes, tick_inputs  # noqa: F401

T, K = 32, 4
N = 4 * T  # test_pallas.layout's 4 post blocks
GROUPS = 3


def _case(b, collect, seed=5):
  col, w, gain = layout(3, T, K)
  q = spikes(4, (b, N), 0.3)
  args = tick_inputs(seed, b, N, collect)
  tick = args[:4] + args[5:] + ((None, None) if not collect else ())
  # The first two post blocks each inside one group (one row sum), the others across groups
  # (the one-hot dot).
  idx = jnp.arange(N)
  group = jnp.where(idx < 2 * T, idx // T, idx % GROUPS).astype(jnp.int32)
  return (q, w, col, gain) + tick + (group,)


def _firm(case, rtol=1e-5):
  """Where the reference's scaled threshold distance is clear of 0 (a float32 rounding of
  the current cannot flip the spike there)."""
  q, w, col, gain, v, i, a, tr, drive, gate, vec = case[:11]
  prop = propagate.propagate_reference(q, w, col, gain)
  cur = prop * jnp.where(vec[1] > 0, gate[:, None], 1.0) + drive * vec[2]
  x = neuron_update.alif_update_reference(v, i, a, tr, cur, vec[0], **ALIF)[5]
  return jnp.abs(x) > rtol


@pytest.mark.parametrize("b, block_b, collect", [(16, None, True), (32, 16, False),
                                                 (64, 32, True)])
def test_propagate_tick_matches_reference_and_unfused_pair(interpret, b, block_b, collect):
  case = _case(b, collect)
  kw = dict(**ALIF, n_groups=GROUPS, write_s=False)
  out = jax.jit(lambda *c: neuron_update.propagate_tick(
      *c, **kw, block_b=block_b, interpret=interpret))(*case)
  ref = neuron_update.propagate_tick_reference(*case, **kw)
  q, w, col, gain = case[:4]
  prop = propagate.propagate(q, w, col, gain, block_b=block_b or neuron_update.fused_block_b(b),
                             interpret=interpret)
  pair = neuron_update.alif_tick(*case[4:8], prop, *case[8:], **kw, interpret=interpret)
  assert len(out) == len(ref) == len(pair) == (10 if collect else 8)
  assert out[4] is None and ref[4] is None  # write_s=False
  firm = _firm(case)
  spikes_ref = jnp.abs(ref[5].astype(jnp.float32))
  assert 0.05 < float(jnp.mean(spikes_ref)) < 0.95
  assert float(jnp.min(ref[5])) == -1.0 == -float(jnp.max(ref[5]))
  flips = jnp.where(firm, jnp.abs(out[5].astype(jnp.float32)) != spikes_ref, False)
  assert not bool(jnp.any(flips)), "spikes differ away from the threshold"
  for k, (o, r, p) in enumerate(zip(out, ref, pair)):
    if o is None:
      continue
    assert o.shape == r.shape and o.dtype == r.dtype
    if k == len(out) - 1:  # group counts: exact sums of the (firm) spikes
      if bool(jnp.all(firm)):
        np.testing.assert_array_equal(np.asarray(o), np.asarray(r))
      continue
    tol = "bfloat16" if r.dtype == jnp.bfloat16 else "float32"
    o32, r32 = o.astype(jnp.float32), r.astype(jnp.float32)
    assert_close(jnp.where(firm, o32, r32), r32, tol, K * T)
    if interpret:  # the same tile products in the same order as the unfused kernels
      np.testing.assert_array_equal(np.asarray(o32), np.asarray(p.astype(jnp.float32)))


def test_propagate_tick_takes_rows_laid_out_once(interpret):
  """`tick_rows(fused_tile=T)`: every phase's rows and 128-neuron-block flags laid out once;
  `.at(p)` in place of phase p's [6, N] rows gives the same fused tick bit for bit (the
  kernel, and the reference)."""
  case = list(_case(16, True))
  vec = case[10]
  gain = neuron_update.TICK_VEC_ROWS.index("gain")
  vec_Px6xN = jnp.stack([vec, vec.at[gain, N // 2:].set(0.0)])
  kw = dict(**ALIF, n_groups=GROUPS, write_s=False)
  rows = neuron_update.tick_rows(vec_Px6xN, case[-1], GROUPS, batch=16, fused_tile=T)
  assert rows.flags_PxFxNb.shape == (2, 4, N // T)
  for p in range(2):
    case[10] = vec_Px6xN[p]
    plain = neuron_update.propagate_tick(*case, **kw, interpret=interpret)
    want = neuron_update.propagate_tick_reference(*case, **kw)
    case[10] = rows.at(p)
    laid = neuron_update.propagate_tick(*case, **kw, interpret=interpret)
    ref = neuron_update.propagate_tick_reference(*case, **kw)
    for o, q, w, r in zip(laid, plain, want, ref, strict=True):
      if w is not None:
        np.testing.assert_array_equal(np.asarray(o.astype(jnp.float32)),
                                      np.asarray(q.astype(jnp.float32)))
        np.testing.assert_array_equal(np.asarray(r.astype(jnp.float32)),
                                      np.asarray(w.astype(jnp.float32)))
  # Rows laid out for the unfused tick (here blocks of N neurons) do not fit: a clear error.
  case[10] = neuron_update.tick_rows(vec_Px6xN, case[-1], GROUPS, batch=256).at(0)
  with pytest.raises(ValueError, match="laid out for another kernel"):
    neuron_update.propagate_tick(*case, **kw, interpret=True)


def test_propagate_tick_grads_match_reference(interpret):
  case = _case(16, True)
  kw = dict(**ALIF, n_groups=GROUPS, write_s=False)

  def loss(fn):
    def f(w, v, drive):
      c = case[:1] + (w,) + case[2:4] + (v,) + case[5:8] + (drive,) + case[9:]
      out = fn(*c, **kw)
      return jnp.sum(out[0] * 0.3) + jnp.sum(out[6] * 0.7) + jnp.sum(out[7].astype(jnp.float32))
    return f

  fused = lambda *c, **k: neuron_update.propagate_tick(*c, **k, interpret=interpret)
  got = jax.grad(loss(fused), argnums=(0, 1, 2))(case[1], case[4], case[8])
  want = jax.grad(loss(neuron_update.propagate_tick_reference), argnums=(0, 1, 2))(
      case[1], case[4], case[8])
  for g, r in zip(got, want, strict=True):
    assert float(jnp.max(jnp.abs(r.astype(jnp.float32)))) > 0
    assert_close(g, r, "bfloat16" if r.dtype == jnp.bfloat16 else "float32", 16 * N, factor=8)


def test_ops_dispatch_fuses_only_where_it_can(monkeypatch):
  """ops.propagate_tick calls the fused kernel for Pallas with B a multiple of 16 and
  fuse=True, else the propagation and the tick (the XLA path: the references)."""
  calls = []
  real = neuron_update.propagate_tick
  monkeypatch.setattr(neuron_update, "propagate_tick",
                      lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k, interpret=True))
  monkeypatch.setattr(propagate, "propagate",
                      lambda *a, **k: calls.append("pair") or propagate.propagate_reference(*a[:4]))
  monkeypatch.setattr(neuron_update, "alif_tick",
                      functools.partial(neuron_update.alif_tick, interpret=True))
  kw = dict(**ALIF, n_groups=GROUPS, write_s=False)
  for b, impl, fuse, want in [(16, "pallas", True, 16), (16, "pallas", False, "pair"),
                              (8, "pallas", True, "pair"), (16, "xla", True, None)]:
    calls.clear()
    case = _case(b, False)
    out = ops.propagate_tick(*case, **kw, implementation=impl, fuse=fuse)
    ref = neuron_update.propagate_tick_reference(*case, **kw)
    assert calls == ([] if want is None else [want])
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-5)


def _steps(cfg, batch, n_tokens=3):
  params, state = brain.init(cfg, jax.random.PRNGKey(0), batch)
  toks = jax.random.randint(jax.random.PRNGKey(1), (n_tokens, batch), 0, cfg.vocab_size)
  rates = []
  for tok_B in toks:
    state, logits, aux = brain.cognitive_step(params, state, tok_B, cfg)
    rates.append(np.asarray(aux.rates_PxA))
  return state, logits, np.mean(rates, axis=(0, 1))


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_fused_brain_equals_unfused_brain(state_dtype, kernels_on_this_device):
  """The tiny brain, B = 16 on Pallas: with fuse_propagation the same float32 currents reach
  the same tick, so every leaf of the state (and the logits) is the same: bit-identical in
  interpret mode, within float32 rounding compiled."""
  base = tiny_config(implementation="pallas", state_dtype=state_dtype)
  want, logits_want, rates = _steps(base, 16)
  got, logits_got, _ = _steps(base.replace(fuse_propagation=True), 16)
  assert np.all(rates > 0.002)
  exact = jax.devices()[0].platform != "gpu"
  for g, w in zip(jax.tree.leaves((got, logits_got)), jax.tree.leaves((want, logits_want)),
                  strict=True):
    assert g.dtype == w.dtype
    if exact:
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    else:
      np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                 rtol=2e-2, atol=2e-2)


def test_propagate_tick_refuses_bad_arguments():
  case = _case(16, False)
  kw = dict(**ALIF, n_groups=GROUPS, write_s=False, interpret=True)
  with pytest.raises(ValueError, match="power of two >= 16 dividing B"):
    neuron_update.propagate_tick(*case, **kw, block_b=32)  # 32 does not divide 16
  small = _case(8, False)
  with pytest.raises(ValueError, match="call propagate and alif_tick"):
    neuron_update.propagate_tick(*small, **kw)
  with pytest.raises(ValueError, match="inconsistent shapes"):
    neuron_update.propagate_tick(case[0][:, :T], *case[1:], **kw)
  with pytest.raises(ValueError, match="fuse_propagation must be True or False"):
    tiny_config(fuse_propagation="yes")
  with pytest.raises(ValueError, match="propagation_backend must be one of"):
    tiny_config(propagation_backend="cuda")


@pytest.mark.parametrize("b_group", [1, 2, 3])
def test_propagate_launch_order_changes_nothing(interpret, b_group):
  """`propagate(b_group=)` only reorders the programs (`tile_order`): every (batch tile,
  post block) is computed once, so the current is the default order's, bit for bit
  (3 does not divide the 4 batch tiles: its gcd with them, 1, is used)."""
  col, w, gain = layout(7, T, K)
  q = spikes(8, (64, N), 0.3)
  want = propagate.propagate(q, w, col, gain, block_b=16, interpret=interpret)
  got = propagate.propagate(q, w, col, gain, block_b=16, b_group=b_group, interpret=interpret)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert_close(want, propagate.propagate_reference(q, w, col, gain), "float32", K * T)
  seen = {propagate.tile_order(g, 4, 4, b_group if b_group != 3 else 1) for g in range(16)}
  assert seen == {(bb, r) for bb in range(4) for r in range(4)}


def test_propagate_b_group_is_checked():
  col, w, gain = layout(7, T, K)
  with pytest.raises(ValueError, match="b_group must be a positive"):
    propagate.propagate(spikes(8, (16, N), 0.3), w, col, gain, b_group=0, interpret=True)
