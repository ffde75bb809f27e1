"""Checkpoints: exact round trip, damage and mismatch named, atomic writes, keep-last-K,
failed writes (disk full, unwritable directory) named with the previous checkpoint intact."""

import errno
import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from neurogen_jax import checkpoint, learning
from neurogen_jax.config import BrainConfig, seed_phases, tiny_config
from neurogen_jax.plasticity import PlasticityConfig
from neurogen_jax.tokenizer import ByteTokenizer

BATCH = 2
# Tagging off: its tiles-shaped state is zero-size, which orbax cannot store as such.
PCFG = PlasticityConfig(tagging=False)
DATA_STATE = {"documents": {"file_position": 3, "records_in_file": 1}, "streams": ["eJzLSM3J"]}


@pytest.fixture(scope="module")
def brain_config():
  return tiny_config(phases=seed_phases((1, 1, 1, 1, 1)))


@pytest.fixture(scope="module")
def optimizer():
  return learning.make_optimizer(1e-3)


@pytest.fixture(scope="module")
def train_state(brain_config, optimizer):
  """A TrainState whose every leaf holds random bits of its dtype (bf16 tiles included)."""
  init = jax.jit(functools.partial(learning.init_train_state, brain_config, PCFG, optimizer,
                                   batch=BATCH, mode="local"))
  ts = init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def scramble(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
      return jnp.asarray(rng.integers(0, 100, x.shape).astype(x.dtype))
    return jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype))

  return jax.tree.map(scramble, ts)._replace(step=jnp.int32(7))


def save(directory, ts, brain_config, step=None, keep=3, loss=1.5):
  if step is not None:
    ts = ts._replace(step=jnp.int32(step))
  return checkpoint.save(directory, ts, rng=jax.random.PRNGKey(42), data_state=DATA_STATE,
                         tokenizer=ByteTokenizer(), brain_config=brain_config,
                         metadata={"tokens": 448, "loss": loss}, keep=keep)


def assert_trees_bit_equal(a, b):
  leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_round_trip_is_bit_exact(tmp_path, train_state, brain_config, optimizer):
  before = time.time()
  info = save(tmp_path / "checkpoints", train_state, brain_config)
  assert info.step == 7 and info.path.name == "checkpoint_step_7"
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  restored, rng = checkpoint.restore(info.path, abstract)
  assert_trees_bit_equal(restored, train_state)
  assert restored.params.tiles.dtype == jnp.bfloat16
  assert restored.plastic.early_W.shape == (0, 0, 0, 0)  # rebuilt, not stored
  np.testing.assert_array_equal(rng, jax.random.PRNGKey(42))
  assert checkpoint.read_data_state(info.path) == DATA_STATE
  assert isinstance(checkpoint.load_tokenizer(info.path), ByteTokenizer)
  meta = checkpoint.read_metadata(info.path)
  assert (meta["step"], meta["tokens"], meta["loss"], meta["batch_size"]) == (7, 448, 1.5, BATCH)
  assert before <= meta["time"] <= time.time()
  assert checkpoint.config_from_dict(BrainConfig, meta["brain_config"]) == brain_config
  assert json.loads(info.metadata_path.read_text()) == meta  # the copy beside the directory
  assert set(meta["manifest"]) >= {"data_state.json", "tokenizer/byte_tokenizer.json"}


def test_load_brain_from_run_directory(tmp_path, train_state, brain_config):
  save(tmp_path / "checkpoints", train_state, brain_config, step=3)
  save(tmp_path / "checkpoints", train_state, brain_config, step=5)
  loaded = checkpoint.load_brain(tmp_path)  # the run directory: latest checkpoint
  assert loaded.metadata["step"] == 5 and loaded.config == brain_config
  assert_trees_bit_equal(loaded.params, train_state.params)
  assert_trees_bit_equal(loaded.brain_state, train_state.brain_state)


def test_truncated_file_is_named(tmp_path, train_state, brain_config, optimizer):
  info = save(tmp_path, train_state, brain_config)
  victim = largest_file(info.path / "state" / "params")
  size = victim.stat().st_size
  victim.write_bytes(victim.read_bytes()[: size // 2])
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.restore(info.path, abstract)
  assert str(victim) in str(e.value)
  assert f"{size // 2} bytes, {size} were written" in str(e.value)


def test_damaged_orbax_metadata_is_named(tmp_path, train_state, brain_config, optimizer):
  info = save(tmp_path, train_state, brain_config)
  (info.path / "state" / "params" / "_METADATA").unlink()
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  with pytest.raises(checkpoint.CheckpointError, match="_METADATA: missing") as e:
    checkpoint.restore(info.path, abstract)  # the manifest names the file first
  assert str(info.path / "state" / "params" / "_METADATA") in str(e.value)
  with pytest.raises(checkpoint.CheckpointError, match="missing or unreadable") as e:
    checkpoint.restore(info.path, abstract, verify_files=False)  # orbax's view of it
  assert str(info.path / "state" / "params") in str(e.value)


def test_corrupt_file_is_named(tmp_path, train_state, brain_config, optimizer):
  info = save(tmp_path, train_state, brain_config)
  victim = largest_file(info.path / "state" / "opt_state")
  raw = bytearray(victim.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  victim.write_bytes(bytes(raw))
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  with pytest.raises(checkpoint.CheckpointError, match="sha256 mismatch") as e:
    checkpoint.restore(info.path, abstract)
  assert str(victim) in str(e.value)


def test_damaged_or_missing_metadata_is_named(tmp_path, train_state, brain_config):
  info = save(tmp_path, train_state, brain_config)
  meta_file = info.path / "metadata.json"
  meta_file.write_text(meta_file.read_text()[:100])
  with pytest.raises(checkpoint.CheckpointError, match="unreadable") as e:
    checkpoint.load_brain(info.path)
  assert str(meta_file) in str(e.value)
  meta_file.unlink()
  with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint") as e:
    checkpoint.load_brain(info.path)
  assert str(meta_file) in str(e.value)


def test_mismatched_config_names_every_array(tmp_path, train_state, brain_config, optimizer):
  info = save(tmp_path, train_state, brain_config)
  other = brain_config.replace(embedding_dim=32)
  abstract = checkpoint.abstract_train_state(other, PCFG.replace(tagging=True), optimizer, BATCH,
                                             "local")
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.restore(info.path, abstract)
  message = str(e.value)
  assert str(info.path / "state") in message
  assert "params.embed: checkpoint has float32[257, 64], expected float32[257, 32]" in message
  assert "plastic.early_W: not in the checkpoint, expected bfloat16[156, 8, 16, 16]" in message
  assert "metadata.json" in message  # where to find the checkpoint's own configuration


def test_interrupted_save_leaves_nothing_visible(tmp_path, train_state, brain_config, monkeypatch):
  root = tmp_path / "checkpoints"
  save(root, train_state, brain_config, step=1)

  def crash(*args):
    raise KeyboardInterrupt  # e.g. a second Ctrl-C in the middle of the save

  monkeypatch.setattr(checkpoint.os, "rename", crash)
  with pytest.raises(KeyboardInterrupt):
    save(root, train_state, brain_config, step=2)
  monkeypatch.undo()
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [1]
  assert sorted(p.name for p in root.iterdir()) == ["checkpoint_step_1", "checkpoint_step_1.json"]


def test_leftover_tmp_dir_is_ignored_then_removed(tmp_path, train_state, brain_config):
  root = tmp_path / "checkpoints"
  save(root, train_state, brain_config, step=1)
  leftover = root / ".tmp-checkpoint_step_9-123-abcd"  # a crashed process's half-written save
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "junk").write_bytes(b"\0" * 10)
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [1]
  assert checkpoint.latest_checkpoint(root).step == 1
  assert checkpoint.find_checkpoint(tmp_path) == root / "checkpoint_step_1"
  save(root, train_state, brain_config, step=2)
  assert not leftover.exists()
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [1, 2]


def test_keeps_the_last_k(tmp_path, train_state, brain_config):
  root = tmp_path / "checkpoints"
  for step in range(1, 6):
    save(root, train_state, brain_config, step=step, keep=2)
  assert sorted(p.name for p in root.iterdir()) == [
      "checkpoint_step_4", "checkpoint_step_4.json", "checkpoint_step_5", "checkpoint_step_5.json"]
  save(root, train_state, brain_config, step=6, keep=0)  # 0 keeps all
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [4, 5, 6]


def test_same_step_is_replaced(tmp_path, train_state, brain_config):
  save(tmp_path, train_state, brain_config, step=3, loss=2.0)
  info = save(tmp_path, train_state, brain_config, step=3, loss=1.0)
  assert [c.step for c in checkpoint.list_checkpoints(tmp_path)] == [3]
  assert checkpoint.read_metadata(info.path)["loss"] == 1.0
  assert json.loads(info.metadata_path.read_text())["loss"] == 1.0


def test_find_checkpoint_errors_name_the_path(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found") as e:
    checkpoint.find_checkpoint(tmp_path / "nowhere")
  assert str(tmp_path / "nowhere") in str(e.value)
  with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint directory"):
    checkpoint.find_checkpoint(tmp_path / "checkpoint_step_3")


def test_configs_round_trip_through_json():
  brain_config = tiny_config(phases=seed_phases((1, 2, 3, 2, 1)), neuron_model="izhikevich")
  as_json = json.loads(json.dumps(checkpoint.config_to_dict(brain_config)))
  assert checkpoint.config_from_dict(BrainConfig, as_json) == brain_config
  pcfg = PlasticityConfig(rate_band=(0.01, 0.1), replay=False)
  assert checkpoint.config_from_dict(
      PlasticityConfig, json.loads(json.dumps(checkpoint.config_to_dict(pcfg)))) == pcfg
  with pytest.raises(ValueError, match=r"unknown fields \['gamma'\] for PlasticityConfig"):
    checkpoint.config_from_dict(PlasticityConfig, {"gamma": 1.0})


def test_config_differences_of_dataclasses(brain_config):
  assert checkpoint.config_differences(brain_config, brain_config) == []
  assert checkpoint.config_differences(brain_config, brain_config.replace(dt_ms=2.0)) == [
      "dt_ms: checkpoint 5.0, now 2.0"]


def test_checkpoint_without_tokenizer_or_data_state(tmp_path, train_state, brain_config):
  info = checkpoint.save(tmp_path, train_state, rng=jax.random.PRNGKey(0), data_state=None,
                         tokenizer=None, brain_config=brain_config, metadata={}, keep=0)
  loaded = checkpoint.load_brain(info.path)
  assert loaded.tokenizer is None and checkpoint.read_data_state(info.path) is None
  assert_trees_bit_equal(loaded.params, train_state.params)


def test_config_differences_lists_each_field():
  saved = {"brain": {"scale": 0.5, "areas": [1, 2]}, "mode": "local"}
  now = {"brain": {"scale": 1.0, "areas": [1, 3]}, "mode": "local", "extra": 1}
  assert checkpoint.config_differences(saved, now) == [
      "brain.areas[1]: checkpoint 2, now 3", "brain.scale: checkpoint 0.5, now 1.0",
      "extra: not in the checkpoint, now 1"]
  assert checkpoint.config_differences(saved, json.loads(json.dumps(saved))) == []


def test_manifest_covers_every_file(tmp_path, train_state, brain_config):
  info = save(tmp_path, train_state, brain_config)
  files = {p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()}
  manifest = checkpoint.read_metadata(info.path)["manifest"]
  assert set(manifest) == files - {"metadata.json"}
  for name, (size, _) in manifest.items():
    assert os.path.getsize(info.path / name) == size


NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


def _fail_orbax(*args, **kwargs):
  raise NO_SPACE


def _fail_orbax_wrapped(*args, **kwargs):  # tensorstore's way of reporting it
  raise ValueError("INTERNAL: Error writing local file \"/ckpt/d/abc\": [OS error: No space left "
                   "on device]")


def _fail_write_text(self, *args, **kwargs):
  raise NO_SPACE


@pytest.mark.parametrize("target, replacement", [
    ((ocp.Checkpointer, "save"), _fail_orbax),
    ((ocp.Checkpointer, "save"), _fail_orbax_wrapped),
    ((Path, "write_text"), _fail_write_text),
], ids=["orbax-oserror", "orbax-wrapped", "json-files"])
def test_disk_full_is_named_and_keeps_the_previous_checkpoint(
    tmp_path, train_state, brain_config, optimizer, monkeypatch, target, replacement):
  root = tmp_path / "checkpoints"
  save(root, train_state, brain_config, step=1)
  monkeypatch.setattr(*target, replacement)
  with pytest.raises(checkpoint.CheckpointError) as e:
    save(root, train_state, brain_config, step=2)
  monkeypatch.undo()
  message = str(e.value)
  assert f"{root}: cannot write checkpoint step 2" in message
  assert "No space left on device" in message
  assert f"The disk holding {root} is full: free space there" in message
  assert f"The previous checkpoint {root / 'checkpoint_step_1'} is intact." in message
  assert sorted(p.name for p in root.iterdir()) == ["checkpoint_step_1", "checkpoint_step_1.json"]
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  restored, _ = checkpoint.restore(root / "checkpoint_step_1", abstract)  # verifies the manifest
  assert_trees_bit_equal(restored, train_state._replace(step=jnp.int32(1)))


def test_unwritable_directory_is_named(tmp_path, train_state, brain_config, optimizer,
                                       monkeypatch):
  root = tmp_path / "checkpoints"
  save(root, train_state, brain_config, step=1)
  if os.geteuid() == 0:  # root writes through permissions: simulate what chmod would do
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
      if self.parent == root:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
      return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
  else:
    root.chmod(0o500)
  try:
    with pytest.raises(checkpoint.CheckpointError) as e:
      save(root, train_state, brain_config, step=2)
  finally:
    root.chmod(0o700)
    monkeypatch.undo()
  message = str(e.value)
  assert f"{root}: cannot write checkpoint step 2 (PermissionError" in message
  assert f"{root} is not writable: make it writable (chmod u+w {root})" in message
  assert f"The previous checkpoint {root / 'checkpoint_step_1'} is intact." in message
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [1]
  abstract = checkpoint.abstract_train_state(brain_config, PCFG, optimizer, BATCH, "local")
  restored, _ = checkpoint.restore(root / "checkpoint_step_1", abstract)
  assert_trees_bit_equal(restored, train_state._replace(step=jnp.int32(1)))


def test_implementation_auto_and_resume_across_implementations(monkeypatch):
  """config.brain.implementation 'auto' is XLA on a CPU and Pallas on a GPU (XLA when the
  mesh splits the neurons); a checkpoint's signature ignores how the step runs, but not
  what it computes (state_dtype)."""
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
  from neurogen_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  assert cfg.brain.implementation == "auto"
  assert train_lib.brain_config_from(cfg, 257).implementation == "xla"  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert train_lib.brain_config_from(cfg, 257).implementation == "pallas"
  cfg.mesh.model = 2
  assert train_lib.brain_config_from(cfg, 257).implementation == "xla"
  cfg.mesh.model = 1
  cfg.brain.implementation = "xla"  # an explicit choice stays
  assert train_lib.brain_config_from(cfg, 257).implementation == "xla"
  cfg.brain.implementation = "cuda"
  with pytest.raises(train_lib.ConfigError, match="must be 'auto'.*'xla' or 'pallas'"):
    train_lib.brain_config_from(cfg, 257)
  monkeypatch.undo()

  def signature(**brain):
    config = tiny_config(**brain)
    return json.loads(json.dumps({"brain_config": checkpoint.config_to_dict(config),
                                  "batch_size": 4}))
  saved = signature(implementation="xla")
  assert train_lib.signature_differences(
      saved, signature(implementation="pallas", tick_unroll=5, fuse_propagation=True,
                       propagation_backend="mosaic_gpu", synapse_backend="triton")) == []
  assert train_lib.signature_differences(saved, signature(state_dtype="bfloat16")) == [
      "brain_config.state_dtype: checkpoint 'float32', now 'bfloat16'"]
  # A checkpoint from before a field existed: the field counts at its default.
  old = json.loads(json.dumps(saved))
  del old["brain_config"]["fuse_propagation"], old["brain_config"]["current_dtype"]
  del old["brain_config"]["synapse_backend"]  # new in session 22
  assert train_lib.signature_differences(old, saved) == []
  assert train_lib.signature_differences(old, signature(current_dtype="bfloat16")) == [
      "brain_config.current_dtype: checkpoint 'float32', now 'bfloat16'"]


def test_a_pallas_brain_loads_with_xla_off_the_gpu(tmp_path, train_state, brain_config):
  """Trained with the Pallas kernels (e.g. `implementation: auto` on a GPU), a checkpoint
  loads for generation on a CPU with the XLA path, the same function; the weights as saved."""
  info = save(tmp_path, train_state, brain_config.replace(implementation="pallas"))
  loaded = checkpoint.load_brain(info.path)
  want = "pallas" if jax.devices()[0].platform == "gpu" else "xla"
  assert loaded.config == brain_config.replace(implementation=want)
  assert_trees_bit_equal(loaded.params, train_state.params)
