"""e-prop's input-side gradient estimate against the true (surrogate BPTT) gradient.

Symmetric e-prop feeds the readout area its exact readout gradient, so its estimate for
the readout area's input weights must point where backprop through the spikes points;
random feedback must not (that is what it trades for needing no readout weights).
Tiny brain, 8 streams x 4 random tokens, only e-prop on, a random non-zero readout.
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
  for feedback in ("random", "symmetric"):
    pcfg = PlasticityConfig(eprop_feedback=feedback, **ONLY_EPROP)
    ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 8)
    w_out = 0.5 * jax.random.normal(jax.random.PRNGKey(3), ts.params.w_out.shape)
    ts = ts._replace(params=ts.params._replace(w_out=w_out))
    local = learning._local_chunk(cfg, pcfg, ts, toks[:, :-1], toks[:, 1:])[3]
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
