"""`BrainConfig.readout_also`: the readout reads several areas' traces side by side.

The features are the read areas' columns in `readout_areas` order (Broca's first, as
without the option, so the dynamics and Broca's features do not change); the readout's
own e-prop signal (`eprop_feedback="readout"`) reaches every read area and equals the
gradient of the loss with respect to the concatenated features; a training chunk learns
the extra area's readout rows and input weights; bad values are refused.
Tiny brain (`tiny_config`, 2,496 neurons).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import brain, learning, plasticity, readout
from neurogen_jax.config import tiny_config
from neurogen_jax.plasticity import PlasticityConfig

ONLY_EPROP = dict(stdp=False, dopamine=False, tagging=False, homeostasis=False, replay=False)


def _read_pfc():
  return dataclasses.replace(tiny_config(), readout_also=("pfc",))


def test_read_areas_and_place_read_areas_are_inverse():
  cfg = _read_pfc()
  broca, pfc = cfg.area_slice("broca"), cfg.area_slice("pfc")
  assert cfg.readout_areas == ("broca", "pfc")
  assert cfg.readout_size == (broca.stop - broca.start) + (pfc.stop - pfc.start)
  x_BxN = jnp.arange(2 * cfg.num_neurons, dtype=jnp.float32).reshape(2, cfg.num_neurons)
  f_BxNr = np.asarray(readout.read_areas(cfg, x_BxN))
  np.testing.assert_array_equal(f_BxNr, np.concatenate([x_BxN[:, broca], x_BxN[:, pfc]], axis=1))
  back = np.asarray(readout.place_read_areas(cfg, jnp.zeros_like(x_BxN), jnp.asarray(f_BxNr)))
  keep = np.zeros(cfg.num_neurons, bool)
  keep[broca], keep[pfc] = True, True
  np.testing.assert_array_equal(back[:, keep], np.asarray(x_BxN)[:, keep])
  assert np.all(back[:, ~keep] == 0)


def test_only_the_read_areas_are_read():
  """The tick's read weight is zero outside the read areas (their read sums are never used;
  the Pallas tick skips their blocks): the mask covers exactly the read areas."""
  for cfg in (tiny_config(), _read_pfc()):
    mask = readout.read_mask_N(cfg)
    want = np.zeros(cfg.num_neurons, bool)
    for name in cfg.readout_areas:
      want[cfg.area_slice(name)] = True
    np.testing.assert_array_equal(mask, want)
    assert mask.sum() == cfg.readout_size


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_features_are_broca_then_pfc_and_the_dynamics_do_not_change(implementation,
                                                                   kernels_on_this_device):
  base, cfg = tiny_config(implementation=implementation), _read_pfc()
  cfg = cfg.replace(implementation=implementation)
  nb = base.readout_size
  params0, state0 = brain.init(base, jax.random.PRNGKey(0), 4)
  params1, state1 = brain.init(cfg, jax.random.PRNGKey(0), 4)
  assert params1.w_out.shape == (cfg.readout_size, cfg.embedding_dim)
  toks = jnp.asarray([3, 70, 101, 200], jnp.int32)
  for _ in range(2):
    state0, _, aux0 = brain.cognitive_step(params0, state0, toks, base)
    state1, _, aux1 = brain.cognitive_step(params1, state1, toks, cfg)
  np.testing.assert_array_equal(np.asarray(state1.neurons.v), np.asarray(state0.neurons.v))
  f1 = np.asarray(aux1.features_BxNr)
  assert f1.shape == (4, cfg.readout_size)
  np.testing.assert_array_equal(f1[:, :nb], np.asarray(aux0.features_BxNr))
  pfc_part = f1[:, nb:]
  assert pfc_part.mean() > 1e-3  # PFC fires: its traces are real features
  assert not np.allclose(pfc_part[:, :nb], f1[:, :nb])


def test_readout_signal_covers_every_read_area_and_is_the_feature_gradient():
  cfg = _read_pfc()
  pcfg = PlasticityConfig(eprop_feedback="readout")
  params, _ = brain.init(cfg, jax.random.PRNGKey(0), 2)
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(2), params.w_out.shape))
  feats = jax.random.uniform(jax.random.PRNGKey(3), (2, cfg.readout_size))
  targets = jnp.asarray([1, 2])
  lg = readout.logits(params.embed, params.w_out, params.b_out, feats)
  fb = plasticity.init_plastic_state(cfg, pcfg).feedback_DxN
  sig = np.asarray(plasticity.learning_signal(cfg, pcfg, params, fb, feats, lg, targets))
  want = np.asarray(jax.grad(lambda f: jnp.sum(readout.cross_entropy(
      readout.logits(params.embed, params.w_out, params.b_out, f), targets)))(feats))
  np.testing.assert_allclose(np.asarray(readout.read_areas(cfg, jnp.asarray(sig))), want,
                             rtol=1e-5, atol=1e-7)
  for name in cfg.area_names:
    part = np.abs(sig[:, cfg.area_slice(name)])
    if name in cfg.readout_areas:
      assert part.mean() > 1e-4, name
    else:
      assert np.all(part == 0), name


def test_layer_norm_gradient_is_autodiffs_of_the_plain_formula():
  """`normalize_features` writes its gradient out (kept from one fused GPU kernel, session
  17): it equals autodiff of the plain layer norm, a silent row (variance 0) included."""
  def plain(x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + readout.LN_EPS)

  x_BxF = jax.random.uniform(jax.random.PRNGKey(0), (3, 4096)) * jnp.asarray([[1.0], [0.01], [0.0]])
  g_BxF = jax.random.normal(jax.random.PRNGKey(1), x_BxF.shape)
  np.testing.assert_allclose(readout.normalize_features(x_BxF), plain(x_BxF), rtol=1e-6, atol=1e-6)
  got = jax.vjp(readout.normalize_features, x_BxF)[1](g_BxF)[0]
  want = jax.vjp(plain, x_BxF)[1](g_BxF)[0]
  scale = np.abs(np.asarray(want)).max(axis=1, keepdims=True)
  assert np.all(scale > 0)
  np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=2e-5)
  # Through jit and the readout's logits, as the e-prop signal takes it.
  w_DxV = jax.random.normal(jax.random.PRNGKey(2), (4096, 8))
  loss = lambda f, norm: jnp.sum(jnp.tanh(norm(f) @ w_DxV / 64.0))
  np.testing.assert_allclose(jax.jit(jax.grad(lambda f: loss(f, readout.normalize_features)))(x_BxF),
                             jax.grad(lambda f: loss(f, plain))(x_BxF), rtol=1e-4, atol=1e-5)


def test_hops_start_from_every_read_area():
  cfg = _read_pfc()
  layers = plasticity.hop_areas(cfg, 5)
  reached = [a for layer in layers for a in layer]
  assert "pfc" not in reached and "broca" not in reached
  assert layers[0] == tuple(sorted(
      {p.source for p in cfg.pathways if p.target in ("broca", "pfc")} - {"broca", "pfc"},
      key=cfg.area_names.index))


def test_a_chunk_learns_the_extra_areas_readout_rows_and_input_weights():
  cfg = _read_pfc()
  nb = tiny_config().readout_size
  pcfg = PlasticityConfig(eprop_feedback="readout", **ONLY_EPROP)
  opt = learning.make_optimizer(1e-2)
  ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), 8)
  ts = ts._replace(params=ts.params._replace(
      w_out=0.1 * jax.random.normal(jax.random.PRNGKey(3), ts.params.w_out.shape)))
  toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 5)), jnp.int32)
  new_ts, metrics = learning.train_chunk(ts, toks[:, :-1], toks[:, 1:], config=cfg, pcfg=pcfg,
                                         optimizer=opt)
  assert bool(metrics.finite) and np.isfinite(float(metrics.loss))
  d_out = np.abs(np.asarray(new_ts.params.w_out - ts.params.w_out))
  assert d_out[nb:].mean() > 0 and d_out[:nb].mean() > 0  # PFC's and Broca's readout rows
  d_in = np.abs(np.asarray(new_ts.params.w_in - ts.params.w_in))
  assert cfg.input_size == cfg.num_neurons  # every area takes the token drive here
  for name in cfg.area_names:  # e-prop moves the input weights of the read areas only
    assert (d_in[:, cfg.area_slice(name)].mean() > 0) == (name in cfg.readout_areas), name
  changed_R = np.any(np.asarray(new_ts.params.tiles, np.float32) != np.asarray(ts.params.tiles, np.float32),
                     axis=(1, 2, 3))
  block_area_R = np.asarray(cfg.area_names)[np.asarray(ts.params.conn.area_N)[::cfg.tile]]
  read_R = np.isin(block_area_R, cfg.readout_areas)
  assert changed_R[read_R].mean() > 0.5 and not changed_R[~read_R].any()  # tiles into them only


@pytest.mark.parametrize("also, match", [
    ("pfc", "readout_also must be a tuple of area names"),
    (("broca",), "readout_also must be a tuple of areas other than"),
    (("pfc", "pfc"), "each once"),
    (("cortex",), r"area 'cortex' \(input/readout\) is not one of"),
])
def test_bad_readout_also_is_refused(also, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(tiny_config(), readout_also=also)
