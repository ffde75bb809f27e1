"""e-prop's input-side gradient estimate against the true (surrogate BPTT) gradient.

Symmetric e-prop feeds the readout area its exact readout gradient, so its estimate for
the readout area's input weights must point where backprop through the spikes points;
random feedback must not (that is what it trades for needing no readout weights).
With `eprop_hops`, the readout area's signal goes back through the synaptic weights:
the areas one, two and three pathway layers back must then point where backprop points
too. Tiny brain, 8 streams x 4 random tokens, only e-prop on, a random non-zero readout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, learning, plasticity, readout
from neurogen_jax.config import tiny_config
from neurogen_jax.plasticity import PlasticityConfig

ONLY_EPROP = dict(stdp=False, dopamine=False, tagging=False, homeostasis=False, replay=False)


def _cos(a, b) -> float:
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def grads():
  cfg = tiny_config()
  opt = learning.make_optimizer(1e-2)
  toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 5)), jnp.int32)
  out = {}
  variants = {"random": dict(eprop_feedback="random"), "symmetric": dict(eprop_feedback="symmetric"),
              "hops": dict(eprop_feedback="readout", eprop_hops=3, eprop_hop_scale=0.3)}
  for feedback, kw in variants.items():
    pcfg = PlasticityConfig(**kw, **ONLY_EPROP)
    ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 8)
    w_out = 0.5 * jax.random.normal(jax.random.PRNGKey(3), ts.params.w_out.shape)
    ts = ts._replace(params=ts.params._replace(w_out=w_out))
    local = learning._local_chunk(cfg, pcfg, ts, toks[:, :-1], toks[:, 1:])[3]
    if not out:  # BPTT does not read the e-prop feedback: one gradient for all (measured equal)
      ts_b = ts._replace(opt_state=opt.init(learning.trainable(ts.params, "bptt")))
      bptt = learning._bptt_chunk(cfg, pcfg, ts_b, toks[:, :-1], toks[:, 1:])[3]
    out[feedback] = (local["w_in"], bptt["w_in"])
  return cfg, out


def test_symmetric_eprop_input_gradient_aligns_with_bptt(grads):
  cfg, out = grads
  broca = cfg.area_slice(cfg.readout_area)
  sym = _cos(out["symmetric"][0][:, broca], out["symmetric"][1][:, broca])
  rnd = _cos(out["random"][0][:, broca], out["random"][1][:, broca])
  print(f"cos(e-prop, bptt) on the readout area's input weights: symmetric {sym:.3f}, random {rnd:.3f}")
  assert sym > 0.6  # measured 0.87
  assert abs(rnd) < 0.3  # measured 0.02


def _signal_inputs(cfg, batch=2):
  """(params with a random readout, features, logits, targets) for one token."""
  params, _ = brain.init(cfg, jax.random.PRNGKey(0), batch)
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(2), params.w_out.shape))
  feats = jax.random.uniform(jax.random.PRNGKey(3), (batch, cfg.readout_size))
  targets = jnp.arange(batch) + 1
  return params, feats, readout.logits(params.embed, params.w_out, params.b_out, feats), targets


def test_eprop_areas_limits_the_signal():
  cfg = tiny_config()
  pcfg = PlasticityConfig(eprop_feedback="random", eprop_areas=("broca", "pfc"))
  params, feats, lg, targets = _signal_inputs(cfg)
  fb = plasticity.init_plastic_state(cfg, pcfg).feedback_DxN
  sig = np.asarray(plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets))
  for name in cfg.area_names:
    part = sig[:, cfg.area_slice(name)]
    if name in ("broca", "pfc"):
      assert np.abs(part).mean() > 1e-3, name
    else:
      assert np.all(part == 0), name
  with pytest.raises(ValueError, match="not areas of this brain"):
    plasticity.learning_signal(cfg, pcfg.replace(eprop_areas=("cortex",)), params, fb, feats, lg,
                               targets)


def test_plasticity_config_rejects_bad_feedback():
  with pytest.raises(ValueError, match="eprop_feedback"):
    PlasticityConfig(eprop_feedback="transpose")
  with pytest.raises(ValueError, match="eprop_areas"):
    PlasticityConfig(eprop_areas="broca")


def test_readout_feedback_reaches_only_the_readout_area():
  cfg = tiny_config()
  pcfg = PlasticityConfig(eprop_feedback="readout")
  params, feats, lg, targets = _signal_inputs(cfg)
  fb = plasticity.init_plastic_state(cfg, pcfg).feedback_DxN
  assert fb.size == 0  # no random matrix is kept when nothing uses it
  sig = np.asarray(plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets))
  broca = cfg.area_slice(cfg.readout_area)
  want = jax.grad(lambda f: jnp.sum(readout.cross_entropy(
      readout.logits(params.embed, params.w_out, params.b_out, f), targets)))(feats)
  np.testing.assert_allclose(sig[:, broca], want, rtol=1e-5, atol=1e-7)
  assert np.abs(sig[:, broca]).mean() > 0
  outside = np.ones(cfg.num_neurons, bool)
  outside[broca] = False
  assert np.all(sig[:, outside] == 0)


def test_hop_areas_follow_the_pathways_back_from_the_readout():
  cfg = tiny_config()  # the seed's areas and pathways
  assert plasticity.hop_areas(cfg, 5) == [("pfc", "basal_ganglia"), ("wernicke", "hippocampus"),
                                          ("thalamus",)]
  assert plasticity.hop_areas(cfg, 1) == [("pfc", "basal_ganglia")]
  assert plasticity.hop_areas(cfg, 0) == []


def test_hop_signal_is_the_transposed_synaptic_current():
  """One hop: L_j = sign_j sum_i gain W_ij L_i psi_i over the readout area's neurons i,
  against a dense weight matrix built from the tiles here."""
  cfg = tiny_config()
  pcfg = PlasticityConfig(eprop_hops=1, eprop_hop_scale=0.5)
  params, feats, lg, targets = _signal_inputs(cfg)
  fb = plasticity.init_plastic_state(cfg, pcfg).feedback_DxN
  post = jax.random.uniform(jax.random.PRNGKey(5), (2, cfg.num_neurons))
  sig = np.asarray(plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets, post))
  base = np.asarray(plasticity.learning_signal(cfg, pcfg.replace(eprop_hops=0), params, fb, feats,
                                               lg, targets))
  t = cfg.tile
  tiles = np.asarray(params.tiles, np.float64)
  col, gain = np.asarray(params.conn.col_RxK), np.asarray(plasticity.tile_gain_sign(cfg, params.conn.pathway_RxK))
  dense = np.zeros((cfg.num_neurons, cfg.num_neurons))  # [pre, post]
  for r in range(tiles.shape[0]):
    for k in range(tiles.shape[1]):
      dense[col[r, k] * t:(col[r, k] + 1) * t, r * t:(r + 1) * t] += gain[r, k] * tiles[r, k]
  broca = np.zeros(cfg.num_neurons)
  broca[cfg.area_slice("broca")] = 1
  want = (base * np.asarray(post) * broca) @ dense.T * np.asarray(params.conn.sign_N, np.float64)
  reached = np.isin(np.asarray(cfg.area_names)[np.asarray(params.conn.area_N)], ("pfc", "basal_ganglia"))
  # bf16 operands in the synaptic current (as in the forward pass): ~0.4% per term.
  np.testing.assert_allclose(sig[:, reached], 0.5 * want[:, reached], rtol=0.03,
                             atol=0.01 * np.abs(want[:, reached]).max())
  assert np.abs(sig[:, reached]).mean() > 0
  np.testing.assert_array_equal(sig[:, ~reached], base[:, ~reached])  # readout area kept, rest 0
  with pytest.raises(ValueError, match="post_BxN"):
    plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets)


def test_hops_give_the_areas_behind_the_readout_a_gradient_that_points_like_bptt(grads):
  cfg, out = grads
  local, bptt = out["hops"]
  cos = {a: _cos(local[:, cfg.area_slice(a)], bptt[:, cfg.area_slice(a)]) for a in cfg.area_names}
  print("cos(e-prop with 3 hops, bptt) per area of w_in:", {a: round(c, 3) for a, c in cos.items()})
  # Measured: broca 0.86, pfc 0.61, basal ganglia 0.42, hippocampus 0.42, thalamus 0.44,
  # wernicke 0.31. Without hops these areas get no e-prop gradient at all.
  assert cos["broca"] > 0.6
  assert cos["pfc"] > 0.4
  for area in ("basal_ganglia", "hippocampus", "thalamus", "wernicke"):
    assert cos[area] > 0.15, area
  sym_local = out["symmetric"][0]
  assert _cos(local[:, cfg.area_slice("pfc")], sym_local[:, cfg.area_slice("pfc")]) < 0.3


def test_plasticity_config_rejects_bad_hops():
  with pytest.raises(ValueError, match="eprop_hops"):
    PlasticityConfig(eprop_hops=-1)
  with pytest.raises(ValueError, match="eprop_hops"):
    PlasticityConfig(eprop_hops=2, eprop_feedback="symmetric")
