"""The jitted training step detects NaN/Inf and skips the update."""

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import learning, plasticity
from neurogen_jax.config import tiny_config


def _setup():
  cfg = tiny_config()
  pc = plasticity.PlasticityConfig()
  opt = learning.make_optimizer(1e-2)
  ts = learning.init_train_state(cfg, pc, opt, jax.random.PRNGKey(0), 2)
  x = jnp.asarray(np.arange(8).reshape(2, 4) % 200, jnp.int32)
  return cfg, pc, opt, ts, x


def test_nan_in_weights_skips_the_update_and_reports_it():
  cfg, pc, opt, ts, x = _setup()
  bad = ts._replace(params=ts.params._replace(w_out=ts.params.w_out.at[0, 0].set(jnp.nan)))
  out, m = learning.train_chunk(bad, x, x, config=cfg, pcfg=pc, optimizer=opt)
  assert not bool(m.finite)
  assert int(out.step) == int(bad.step) + 1
  for a, b in zip(jax.tree.leaves(out._replace(step=bad.step)), jax.tree.leaves(bad)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # nothing else moved


def test_inf_in_state_is_caught_and_clean_chunk_is_finite():
  cfg, pc, opt, ts, x = _setup()
  good, m = learning.train_chunk(ts, x, x, config=cfg, pcfg=pc, optimizer=opt)
  assert bool(m.finite) and np.isfinite(float(m.loss))
  assert not np.array_equal(np.asarray(good.params.w_out), np.asarray(ts.params.w_out))
  neurons = ts.brain_state.neurons._replace(v=ts.brain_state.neurons.v.at[0, 3].set(jnp.inf))
  bad = ts._replace(brain_state=ts.brain_state._replace(neurons=neurons))
  out, m = learning.train_chunk(bad, x, x, config=cfg, pcfg=pc, optimizer=opt)
  assert not bool(m.finite)
  np.testing.assert_array_equal(np.asarray(out.params.tiles), np.asarray(ts.params.tiles))
