"""The optimizer's cosine decay (`make_optimizer(decay_steps=)`, `train.lr_decay_chunks`):
the update shrinks as a cosine to 0, composes with the injected rate a rollback lowers,
resumes exactly, and a resume with another decay is refused with what to do. Also: a
checkpoint from before a config option existed resumes (the option at its default)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import tiny
from neurogen_jax import checkpoint, learning
from neurogen_jax import train as train_lib

TEXTS = ["Alpha beta gamma delta. " * 20, "Second document; with more words. " * 10] * 8


def _updates(opt, n, grad=1.0, lr=None):
  params = {"w": jnp.zeros((3,))}
  state = opt.init(params)
  if lr is not None:
    state = optax.tree_utils.tree_set(state, learning_rate=jnp.float32(lr))
  out = []
  for _ in range(n):
    upd, state = opt.update({"w": jnp.full((3,), grad)}, state, params)
    out.append(float(upd["w"][0]))
  return out


def test_cosine_decay_scales_the_constant_rate_update():
  steps = 8
  const = _updates(learning.make_optimizer(1e-2), steps + 2)
  decayed = _updates(learning.make_optimizer(1e-2, decay_steps=steps), steps + 2)
  for k in range(steps + 2):
    factor = 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
    assert decayed[k] == pytest.approx(const[k] * factor, rel=1e-5, abs=1e-12), k
  assert decayed[0] == pytest.approx(const[0]) and decayed[steps] == 0.0
  # A rollback lowers the injected rate: the decay multiplies it.
  halved = _updates(learning.make_optimizer(1e-2, decay_steps=steps), 3, lr=5e-3)
  np.testing.assert_allclose(halved, np.asarray(decayed[:3]) / 2, rtol=1e-5)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_decay_steps_must_be_a_count(bad):
  with pytest.raises(ValueError, match="decay_steps"):
    learning.make_optimizer(1e-2, decay_steps=bad)


def _config(run_dir, max_chunks, decay):
  config = tiny.get_config()
  config.run_dir = str(run_dir)
  config.train.max_chunks = max_chunks
  config.train.lr_decay_chunks = decay
  config.train.checkpoint_interval = 2
  config.train.keep_checkpoints = 0
  return config


@pytest.mark.slow
def test_trainer_decays_and_resumes_exactly(tmp_path):
  straight = train_lib.Trainer(_config(tmp_path / "a", 6, 6), dataset=TEXTS)
  straight.train()
  w_straight = np.asarray(straight.train_state.params.w_out)
  first = train_lib.Trainer(_config(tmp_path / "b", 4, 6), dataset=TEXTS)
  first.train()
  resumed = train_lib.Trainer(_config(tmp_path / "b", 6, 6), dataset=TEXTS)
  resumed.train()
  assert resumed.step == 6
  np.testing.assert_array_equal(np.asarray(resumed.train_state.params.w_out), w_straight)
  # A checkpoint rebuilt from its metadata alone has the decay's optimizer state.
  ts, _ = checkpoint.restore_training_run(tmp_path / "a" / "checkpoints" / "checkpoint_step_6")
  np.testing.assert_array_equal(np.asarray(ts.params.w_out), w_straight)
  assert [int(c) for c in jax.tree.leaves(ts.opt_state[-1])] == [6]  # the schedule's count
  # Another decay on resume is refused, naming the setting.
  with pytest.raises(checkpoint.CheckpointError, match="lr_decay_chunks"):
    train_lib.Trainer(_config(tmp_path / "b", 8, 12), dataset=TEXTS).train()
  with pytest.raises(train_lib.ConfigError, match="lr_decay_chunks"):
    train_lib.Trainer(_config(tmp_path / "c", 2, -3), dataset=TEXTS)


@pytest.mark.slow
def test_a_checkpoint_from_before_a_new_option_resumes_and_a_set_option_is_refused(tmp_path):
  """Options added since a checkpoint was written (here the e-prop hops) count as their
  defaults: the checkpoint resumes; the option set to something else is named."""
  train_lib.Trainer(_config(tmp_path, 2, 0), dataset=TEXTS).train()
  ckpt = tmp_path / "checkpoints" / "checkpoint_step_2"
  meta_file = ckpt / checkpoint.METADATA_FILE
  meta = json.loads(meta_file.read_text())
  for section in (meta["signature"]["plasticity_config"], meta["config"]["plasticity"]):
    del section["eprop_hops"], section["eprop_hop_scale"]
  meta_file.write_text(json.dumps(meta))
  resumed = train_lib.Trainer(_config(tmp_path, 3, 0), dataset=TEXTS)
  resumed.train()
  assert resumed.step == 3
  config = _config(tmp_path, 4, 0)
  config.plasticity.eprop_hops = 1
  with pytest.raises(checkpoint.CheckpointError, match="eprop_hops"):
    train_lib.Trainer(config, dataset=TEXTS).train()
