"""`BrainConfig.readout_slow_decay`: the readout also reads a slow, per-token exponential
average of the read areas' features.

The fast half of the features is what the readout reads without the option (the dynamics
do not change); the slow half follows slow' = d slow + (1 - d) features token by token and
is carried per stream in `BrainState.slow_BxNr`; the e-prop signal of the read areas is
the exact gradient with respect to this token's features through both halves; a training
chunk learns the slow half's readout rows; without the option the state holds a [0, 0]
array; bad values are refused. Tiny brain (`tiny_config`, 2,496 neurons).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, learning, plasticity, readout
from neurogen_jax.config import tiny_config
from neurogen_jax.plasticity import PlasticityConfig

DECAY = 0.6


def _slow(**kw):
  return tiny_config(readout_slow_decay=DECAY, **kw)


def test_sizes_and_the_state_without_the_option():
  base, cfg = tiny_config(), _slow()
  assert cfg.read_neurons == base.read_neurons == base.readout_size
  assert cfg.readout_size == 2 * base.readout_size
  params, state = brain.init(cfg, jax.random.PRNGKey(0), 3)
  assert params.w_out.shape == (2 * base.readout_size, cfg.embedding_dim)
  assert state.slow_BxNr.shape == (3, base.read_neurons)
  assert brain.init_state(base, 3).slow_BxNr.shape == (0, 0)


def test_slow_features_follow_their_recursion_and_the_fast_half_is_unchanged():
  base, cfg = tiny_config(), _slow()
  params0, state0 = brain.init(base, jax.random.PRNGKey(0), 4)
  params1, state1 = brain.init(cfg, jax.random.PRNGKey(0), 4)
  nr = base.read_neurons
  want_slow = np.zeros((4, nr), np.float32)
  for toks in ([3, 70, 101, 200], [5, 6, 7, 8], [9, 9, 9, 9]):
    toks = jnp.asarray(toks, jnp.int32)
    state0, _, aux0 = brain.cognitive_step(params0, state0, toks, base)
    state1, _, aux1 = brain.cognitive_step(params1, state1, toks, cfg)
    fast = np.asarray(aux0.features_BxNr)
    want_slow = DECAY * want_slow + (1 - DECAY) * fast
    f1 = np.asarray(aux1.features_BxNr)
    assert f1.shape == (4, 2 * nr)
    np.testing.assert_array_equal(f1[:, :nr], fast)
    np.testing.assert_allclose(f1[:, nr:], want_slow, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state1.slow_BxNr), want_slow, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(state1.neurons.v), np.asarray(state0.neurons.v))
  assert want_slow.mean() > 1e-3  # the read areas fire: the slow features are real
  assert not np.allclose(f1[:, nr:], f1[:, :nr])


def test_eprop_signal_is_the_gradient_through_both_halves():
  cfg = _slow()
  pcfg = PlasticityConfig(eprop_feedback="readout")
  params, _ = brain.init(cfg, jax.random.PRNGKey(0), 2)
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(2), params.w_out.shape))
  nr = cfg.read_neurons
  fast = jax.random.uniform(jax.random.PRNGKey(3), (2, nr))
  slow_prev = jax.random.uniform(jax.random.PRNGKey(4), (2, nr))
  targets = jnp.asarray([1, 2])
  feats, _ = readout.with_slow(cfg, fast, slow_prev)
  lg = readout.logits(params.embed, params.w_out, params.b_out, feats)
  fb = plasticity.init_plastic_state(cfg, pcfg).feedback_DxN
  sig = np.asarray(plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets))

  def loss(f_BxNr):  # the token's loss as a function of its own read-area features
    feats, _ = readout.with_slow(cfg, f_BxNr, slow_prev)
    return jnp.sum(readout.cross_entropy(
        readout.logits(params.embed, params.w_out, params.b_out, feats), targets))

  want = np.asarray(jax.grad(loss)(fast))
  got = np.asarray(readout.read_areas(cfg, jnp.asarray(sig)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The slow half's part is real: the fast half's gradient alone differs.
  g_fast = np.asarray(jax.grad(lambda f: jnp.sum(readout.cross_entropy(readout.logits(
      params.embed, params.w_out, params.b_out, f), targets)))(feats))[:, :nr]
  assert np.abs(got - g_fast).mean() > 0.05 * np.abs(got).mean()


def test_a_chunk_learns_the_slow_readout_rows_and_carries_the_slow_state():
  cfg = _slow()
  pcfg = PlasticityConfig()
  opt = learning.make_optimizer(1e-2)
  ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 8)
  toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 5)), jnp.int32)
  new_ts, metrics = learning.train_chunk(ts, toks[:, :-1], toks[:, 1:], config=cfg, pcfg=pcfg,
                                         optimizer=opt)
  assert bool(metrics.finite) and np.isfinite(float(metrics.loss))
  nr = cfg.read_neurons
  d_out = np.abs(np.asarray(new_ts.params.w_out - ts.params.w_out))
  assert d_out[nr:].mean() > 0 and d_out[:nr].mean() > 0
  slow = np.asarray(new_ts.brain_state.slow_BxNr)
  assert slow.shape == (8, nr) and slow.mean() > 1e-3


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, True, "0.5"])
def test_bad_decay_is_refused(decay):
  with pytest.raises(ValueError, match=r"readout_slow_decay must be a number in \[0, 1\)"):
    dataclasses.replace(tiny_config(), readout_slow_decay=decay)
