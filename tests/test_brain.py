"""The brain core: sizes, pathways that carry current, the five phases, readout, jax transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, ops, readout
from neurogen_jax.config import SEED_PATHWAYS, BrainConfig, seed_phases, tiny_config
from neurogen_jax.connectivity import build_connectivity, init_tiles


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config()
  params, state = brain.init(cfg, jax.random.PRNGKey(0), batch=3)
  return cfg, params, state


def test_full_scale_sizes_and_pathways():
  cfg = BrainConfig()
  assert cfg.num_neurons == 79_872
  assert cfg.area_sizes == (2048, 16384, 16384, 8192, 32768, 4096)
  assert cfg.num_blocks == 624
  assert 75e6 < cfg.num_synapses < 85e6  # ~80M synapses, fan-in 1,024
  names = {p.name for p in cfg.pathways}
  for p in SEED_PATHWAYS:
    assert p.name in names
  assert len(SEED_PATHWAYS) == 10


def test_every_pathway_carries_current():
  """Full-scale structure: spikes in a pathway's source area reach its target, and
  removing that pathway's gain changes the target's input (the original's carried none)."""
  cfg = BrainConfig()
  # Built under jit: two programs instead of ~140 eager ops compiled one by one at
  # full-scale shapes (measured: 15 -> 10 CPU-s), and the same structure and tiles
  # bit for bit as eager calls give.
  conn = jax.jit(build_connectivity, static_argnums=0)(cfg, jax.random.PRNGKey(1))
  w = jax.jit(init_tiles, static_argnums=0)(cfg, conn, jax.random.PRNGKey(2))
  base = jnp.asarray([p.gain for p in cfg.pathways], jnp.float32)
  for pi, p in enumerate(cfg.pathways):
    if p.source == p.target:
      continue
    spk = np.zeros((1, cfg.num_neurons), np.float32)
    spk[0, cfg.area_slice(p.source)] = 1.0
    spk = jnp.asarray(spk) * conn.sign_N
    cur_on = ops.propagate(spk, w, conn.col_RxK, base[conn.pathway_RxK])
    cur_off = ops.propagate(spk, w, conn.col_RxK, base.at[pi].set(0.0)[conn.pathway_RxK])
    tgt = cfg.area_slice(p.target)
    diff = np.abs(np.asarray(cur_on - cur_off)[0, tgt])
    assert diff.mean() > 0.1, f"{p.name} carries no current"
    others = np.ones(cfg.num_neurons, bool)
    others[tgt] = False
    assert np.abs(np.asarray(cur_on - cur_off)[0, others]).max() == 0.0


def test_phases_run_in_order_and_activity_reaches_broca(tiny):
  cfg, params, state = tiny
  _, _, aux = brain.cognitive_step(params, state, jnp.array([5, 6, 7]), cfg)
  rates = np.asarray(aux.rates_PxA)  # [phase, area], from rest
  a = {n: i for i, n in enumerate(cfg.area_names)}
  assert rates[0, a["thalamus"]] > 0.005  # Sensation: the token drives the thalamus
  assert rates[0, a["broca"]] == 0.0  # no direct input to Broca
  assert rates[:, a["pfc"]].max() > 0.005  # Thal -> Wernicke -> PFC
  assert rates[3:, a["broca"]].max() > 0.005  # ... -> Broca by Selection/Action
  assert np.argmax(rates[:, a["broca"]] > 0) > 0  # Broca starts after the first phase
  assert np.all(np.asarray(aux.features_BxNr).sum(axis=1) > 0)  # Broca traces were read


def test_logits_follow_brocas_state(tiny):
  """No stale readout: changing only Broca's traces changes the logits."""
  cfg, params, state = tiny
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(3), params.w_out.shape))
  tok = jnp.array([1, 2, 3])
  _, logits_a, _ = brain.cognitive_step(params, state, tok, cfg)
  br = cfg.area_slice("broca")
  kicked = state.neurons._replace(tr=state.neurons.tr.at[:, br].set(
      jax.random.uniform(jax.random.PRNGKey(4), (3, br.stop - br.start)) * 5))
  _, logits_b, _ = brain.cognitive_step(params, state._replace(neurons=kicked), tok, cfg)
  assert float(jnp.max(jnp.abs(logits_a - logits_b))) > 1e-3
  # ...while the readout of a silent-from-the-start Broca with zero w_out is the bias.
  _, logits_z, _ = brain.cognitive_step(params._replace(w_out=jnp.zeros_like(params.w_out)), state, tok, cfg)
  np.testing.assert_allclose(np.asarray(logits_z), np.broadcast_to(np.asarray(params.b_out), logits_z.shape),
                             atol=1e-5)


def test_same_key_same_result_and_different_key_differs():
  cfg = tiny_config()
  p1, s1 = brain.init(cfg, jax.random.PRNGKey(7), batch=2)
  p2, s2 = brain.init(cfg, jax.random.PRNGKey(7), batch=2)
  p3, _ = brain.init(cfg, jax.random.PRNGKey(8), batch=2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(p1.tiles), np.asarray(p3.tiles))
  toks = jnp.array([[3, 4, 5, 6], [7, 8, 9, 10]])
  _, l1, _ = brain.run_sequence(p1, s1, toks, cfg)
  _, l2, _ = brain.run_sequence(p2, s2, toks, cfg)
  np.testing.assert_array_equal(np.asarray(l1), np.asarray(l2))


def test_vmap_over_independent_brains_matches_loop(tiny):
  cfg, params, state = tiny
  states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  toks = jnp.array([[1, 2, 3], [4, 5, 6]])
  step = functools.partial(brain.cognitive_step, config=cfg)
  _, logits_v, _ = jax.vmap(lambda st, tk: step(params, st, tk))(states, toks)
  _, logits_0, _ = step(params, state, toks[0])
  _, logits_1, _ = step(params, state, toks[1])
  np.testing.assert_allclose(np.asarray(logits_v[0]), np.asarray(logits_0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits_v[1]), np.asarray(logits_1), rtol=1e-5, atol=1e-5)


def test_grad_through_run_sequence_is_finite_and_nonzero(tiny):
  cfg, params, state = tiny
  cfg32 = cfg.replace(weight_dtype="float32")
  params = params._replace(tiles=params.tiles.astype(jnp.float32),
                           w_out=jax.random.normal(jax.random.PRNGKey(5), params.w_out.shape) * 0.1)
  toks = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])

  def loss(tiles, w_in, w_out):
    p = params._replace(tiles=tiles, w_in=w_in, w_out=w_out)
    _, logits, _ = brain.run_sequence(p, state, toks, cfg32)
    return jnp.mean(jax.vmap(readout.cross_entropy)(logits[:, :-1], toks[:, 1:]))

  grads = jax.grad(loss, argnums=(0, 1, 2))(params.tiles, params.w_in, params.w_out)
  for name, g in zip(("tiles", "w_in", "w_out"), grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), name
    assert np.abs(g).max() > 0, f"zero gradient for {name}"


# ------------------------------------------------------------------ tick-loop unrolling


def test_scan_unroll_is_chosen_by_the_config():
  cfg = tiny_config()
  ticks = cfg.ticks_per_token
  assert (cfg.scan_unroll(1), cfg.scan_unroll(3)) == (ticks, 1)  # auto, on a GPU
  assert cfg.scan_unroll(1, "cpu") == 1  # on a CPU unrolling only lengthens the compile
  assert cfg.replace(tick_unroll=1).scan_unroll(1) == 1
  assert cfg.replace(tick_unroll=4).scan_unroll(3) == 4
  assert cfg.replace(tick_unroll=10 * ticks).scan_unroll(3) == ticks
  # A full unroll leaves no loop over the ticks in the lowered step; tick_unroll=1 keeps it;
  # auto does what scan_unroll says for this backend.
  params, state = brain.init(cfg, jax.random.PRNGKey(0), batch=1)
  loops = lambda c: brain.cognitive_step.lower(params, state, jnp.array([3]), c).as_text().count(
      "stablehlo.while")
  assert (loops(cfg.replace(tick_unroll=ticks)), loops(cfg.replace(tick_unroll=1))) == (0, 1)
  assert loops(cfg) == (0 if cfg.scan_unroll(1, jax.default_backend()) == ticks else 1)
  for bad in (-1, 2.0, True, "4", None):
    with pytest.raises(ValueError, match="tick_unroll"):
      tiny_config(tick_unroll=bad)
  with pytest.raises(ValueError, match="events_variant"):
    tiny_config(events_variant="warp")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_unrolled_tick_loop_matches_rolled(kernels_on_this_device, implementation, batch):
  """Unrolling changes how XLA schedules and fuses the ticks, not what they compute.

  B = 1 (where auto unrolls on a GPU), with the default 20-tick table: bitwise equal. B = 3:
  the same spikes, and floats equal to float rounding (measured: |diff| <= 5e-7 in currents
  and traces, 1 ulp in area rates), because XLA fuses the unrolled ticks' dense propagation
  and reductions (a dot over N, a mean over B) with another association order than the loop
  body's.
  """
  # B = 3 runs 7 ticks a token (every phase kept), not 20: the unrolled program compiles in
  # a third of the time on CPU (interpret-mode kernels in each unrolled tick).
  short = {} if batch == 1 else dict(phases=seed_phases((1, 2, 2, 1, 1)))
  rolled = tiny_config(implementation=implementation, tick_unroll=1, **short)
  unrolled = rolled.replace(tick_unroll=rolled.ticks_per_token)
  params, state = brain.init(rolled, jax.random.PRNGKey(11), batch=batch)
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(12), params.w_out.shape))
  tok = jnp.arange(batch) + 5
  # Two tokens, so that the second starts from a state with spikes in every area.
  outs = []
  for cfg in (rolled, unrolled):
    st, _, _ = brain.cognitive_step(params, state, tok, cfg)
    outs.append(brain.cognitive_step(params, st, tok + 1, cfg))
  (st_r, logits_r, aux_r), (st_u, logits_u, aux_u) = outs
  assert float(jnp.sum(aux_r.spikes_BxN)) > 0
  np.testing.assert_array_equal(np.asarray(aux_u.spikes_BxN), np.asarray(aux_r.spikes_BxN))
  np.testing.assert_array_equal(np.asarray(st_u.neurons.s), np.asarray(st_r.neurons.s))
  # XLA on a GPU may keep a bfloat16 value in float32 across ops it fuses (its default
  # `xla_allow_excess_precision`): unrolled, the token's bf16 e-prop factor sum (aux.post)
  # is then summed in float32, while the loop rounds it to bf16 each tick (measured on an
  # H200: up to 1.5% of an element). The Pallas tick kernel writes that sum itself, so there
  # it is rounded alike. Allowed there: one bf16 rounding per tick of the token.
  excess_precision = implementation == "xla" and jax.default_backend() == "gpu"
  bf16_sum_tol = rolled.ticks_per_token * 2.0**-8
  np.testing.assert_allclose(np.asarray(aux_u.post_BxN), np.asarray(aux_r.post_BxN),
                             rtol=bf16_sum_tol, atol=bf16_sum_tol)
  if excess_precision:
    aux_r, aux_u = aux_r._replace(post_BxN=None), aux_u._replace(post_BxN=None)
  for name, a, b in (("state", st_r, st_u), ("logits", logits_r, logits_u), ("aux", aux_r, aux_u)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      if batch == 1:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=name)
      else:
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("variant", ["rows", "atomic"])
def test_events_variants_drive_the_same_brain(kernels_on_this_device, variant):
  """config.events_variant reaches the B = 1 Pallas propagation; each variant sums the same
  products (in another order than "tiles": equal up to float rounding, same spikes)."""
  base = tiny_config(implementation="pallas")
  params, state = brain.init(base, jax.random.PRNGKey(13), batch=1)
  tok = jnp.array([9])
  st_t, logits_t, aux_t = brain.cognitive_step(params, state, tok, base)
  st_v, logits_v, aux_v = brain.cognitive_step(params, state, tok, base.replace(events_variant=variant))
  for cfg in (base, base.replace(events_variant=variant)):  # the kernel that was traced
    jaxpr = jax.make_jaxpr(functools.partial(brain.cognitive_step, config=cfg))(params, state, tok)
    assert f"name=propagate_events_{cfg.events_variant}" in str(jaxpr)
  assert float(jnp.sum(aux_t.spikes_BxN)) > 0
  np.testing.assert_array_equal(np.asarray(aux_v.spikes_BxN), np.asarray(aux_t.spikes_BxN))
  for x, y in zip(jax.tree.leaves((st_t, logits_t, aux_t)), jax.tree.leaves((st_v, logits_v, aux_v)),
                  strict=True):
    # Another summation order moves an element by a few float32 ulps of the largest terms
    # summed into it, not of itself (measured on an H200, "atomic": 1.4e-6 on an element of
    # 0.034 in currents up to 5.4): the allowance scales with the leaf's largest value.
    scale = max(1.0, float(np.max(np.abs(np.asarray(x)), initial=0.0)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6 * scale)


def test_inference_params_run_the_step_in_bfloat16_close_to_float32(tiny):
  """`inference_params` stores the token weights in bfloat16 (half the bytes a step reads
  at B = 1); one step from rest gives logits that track the float32 step's (the rounding
  of the drive flips a few spikes, so not bit for bit), and the training parameters are
  untouched."""
  cfg, params, state = tiny
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(3), params.w_out.shape))
  low = brain.inference_params(params)
  assert (low.w_in.dtype, low.embed.dtype, low.w_out.dtype) == (jnp.bfloat16,) * 3
  assert low.tiles.dtype == params.tiles.dtype and params.w_in.dtype == jnp.float32
  tokens = jnp.array([5, 6, 7])
  _, want, aux = brain.cognitive_step(params, state, tokens, cfg, collect=False)
  _, got, aux_low = brain.cognitive_step(low, state, tokens, cfg, collect=False)
  assert got.dtype == jnp.float32
  spread = float(jnp.std(want))
  assert spread > 0.1  # the readout is not flat: the comparison means something
  assert float(jnp.mean(jnp.abs(got - want))) < 0.15 * spread
  for b in range(3):
    assert np.corrcoef(np.asarray(got[b]), np.asarray(want[b]))[0, 1] > 0.97
  np.testing.assert_allclose(np.asarray(aux_low.rates_PxA), np.asarray(aux.rates_PxA),
                             atol=0.05)


def test_block_flags_drive_the_same_brain_as_the_in_kernel_tests(kernels_on_this_device,
                                                                 monkeypatch):
  """From `_FLAGS_MIN_B` streams (set to 16 here) the Pallas tick reads its blocks' flags
  (driven, read, one group) precomputed and counts a block inside one area with a row sum;
  the tiny brain's areas span whole 64-neuron blocks, so every block takes that path.
  Against the same brain with the flags found in each program (and the one-hot counts): bit
  for bit, the spikes, the area rates (from the counts), the state, the logits and the
  token's sums."""
  from neurogen_jax.pallas import neuron_update
  cfg = tiny_config(implementation="pallas", phases=seed_phases((1, 2, 2, 1, 1)))
  batch = 16  # a small B for interpret mode on CPU
  _, _, block_n = neuron_update._layout(batch, cfg.num_neurons)
  assert all(size % block_n == 0 for size in cfg.area_sizes)
  params, state = brain.init(cfg, jax.random.PRNGKey(21), batch=batch)
  tok = jnp.arange(batch) + 3
  outs = []
  for flags_min_b in (batch, batch + 1):
    monkeypatch.setattr(neuron_update, "_FLAGS_MIN_B", flags_min_b)
    brain.cognitive_step.clear_cache()
    st, _, _ = brain.cognitive_step(params, state, tok, cfg)
    outs.append(brain.cognitive_step(params, st, tok + 1, cfg, collect=True))
  (st_f, logits_f, aux_f), (st_k, logits_k, aux_k) = outs
  assert float(jnp.sum(aux_f.spikes_BxN)) > 0
  for x, y in zip(jax.tree.leaves((st_f, logits_f, aux_f)), jax.tree.leaves((st_k, logits_k, aux_k)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
