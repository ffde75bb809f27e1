"""Data-parallel, model-parallel, 2-D, pmap, multi-process and resharded-restore training
equals training on one device.

The rest of the suite sees one CPU device, and the device count is fixed when jax starts,
so this file runs itself as worker processes: one with 8 forced host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), and a pair of processes with 4
each joined by `jax.distributed` (a two-host run in miniature). The workers train the tiny
brain on one device and on each mesh, every chunk from the same single-device state and
batch, and print what the tests compare as JSON; the tests here only read it. A few
quick checks of the layout table and the error messages run in the test process itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

DEVICES = 8
BATCH, CHUNK_LEN, CHUNKS = 8, 4, 3
# A different summation order (streams or neurons split over devices) moves float32 state
# by ~1e-6 and bf16 weights by one rounding step (2^-8 relative): such differences stay
# below 1% of a leaf's scale. The dynamics have thresholds (spikes, synaptic tags), and a
# value next to one may land on the other side: a flipped spike moves its membrane by ~1
# threshold and the tiles it touches. So runs count as equal when the loss agrees and at
# most 0.1% of the elements of any state leaf differ by more than 1% of its scale.
LOSS_TOL = 1e-4           # nats/token, every chunk
OFF_FRACTION_TOL = 1e-3   # per leaf
SPIKE_MISMATCH_TOL = 1e-3
WORKER_TIMEOUT_S = 300    # the 8-device worker takes ~80 s on 2 idle cores, the pair ~40 s
DISCRETE_LEAVES = (".plastic.tag_W", ".brain_state.neurons.s")  # 0/1-like: thresholds decide
# Where the 8-device worker leaves its single-device run for the pair of processes.
REFERENCE_ENV = "NEUROGEN_TEST_SHARDING_REFERENCE"
# Leaves whose scale has a floor: the protein signal is the filtered positive part of the
# streams' mean dopamine, ~1e-6 when that mean sits near zero (float noise in the losses is
# then a few % of it), and it acts only through protein > capture_threshold (0.05).
SCALE_FLOOR = {".plastic.protein": 0.05}


# ------------------------------------------------------------------------ the workers


def _setup(with_state: bool = True):
  """The tiny brain, its optimizer, the initial state (None without `with_state`) and the
  token chunks."""
  import jax
  import numpy as np

  from neurogen_jax import learning, plasticity
  from neurogen_jax.config import tiny_config

  config = tiny_config()
  # Replay every other token, so that storing one stream's episode and re-presenting a
  # few run within the test's tokens.
  pcfg = plasticity.PlasticityConfig(replay_every=2)
  opt = learning.make_optimizer(1e-3)
  kw = dict(config=config, pcfg=pcfg, optimizer=opt)
  ts0 = (learning.init_train_state(config, pcfg, opt, jax.random.PRNGKey(0), BATCH)
         if with_state else None)
  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (BATCH, CHUNKS * CHUNK_LEN + 1), 0,
                                         config.vocab_size), np.int32)
  chunk = lambda c: (tokens[:, c * CHUNK_LEN:(c + 1) * CHUNK_LEN],
                     tokens[:, c * CHUNK_LEN + 1:(c + 1) * CHUNK_LEN + 1])
  return kw, ts0, chunk


def _host(tree):
  import jax
  import numpy as np
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _single_device_run(kw, ts0, chunk):
  """States before/after each chunk (host arrays) and the chunk losses, on one device."""
  import jax.numpy as jnp

  from neurogen_jax import learning

  ts, states, losses = ts0, [_host(ts0)], []
  for c in range(CHUNKS):
    ts, m = learning.train_chunk(ts, *map(jnp.asarray, chunk(c)), **kw)
    states.append(_host(ts))
    losses.append(float(m.loss))
  return states, losses


def _save_reference(path: str, ref, ref_losses) -> None:
  import pickle

  import jax
  with open(path, "wb") as f:
    pickle.dump({"states": [jax.tree.leaves(ts) for ts in ref], "losses": ref_losses}, f)


def _load_reference(path: str, kw: dict):
  """`_single_device_run`'s result as `_save_reference` wrote it (host arrays)."""
  import functools
  import pickle

  import jax

  from neurogen_jax import learning

  with open(path, "rb") as f:
    saved = pickle.load(f)
  shapes = jax.eval_shape(functools.partial(learning.init_train_state, kw["config"], kw["pcfg"],
                                            kw["optimizer"], batch=BATCH), jax.random.PRNGKey(0))
  treedef = jax.tree.structure(shapes)
  return [jax.tree.unflatten(treedef, leaves) for leaves in saved["states"]], saved["losses"]


def _compare(ref, ref_losses, results) -> dict:
  """The worst, over [(c, state after chunk c, loss of chunk c)], of the differences from
  the single-device run; every chunk started from the single-device state before it.

  off_fraction: of a leaf's elements, those off by more than 1% of the leaf's scale
  (max |reference|, at least its `SCALE_FLOOR`); max_rel_err: the largest difference / scale over the continuous leaves.
  """
  import jax
  import numpy as np

  run = dict(loss_err=0.0, off_fraction=0.0, worst_leaf="", max_rel_err=0.0, spike_mismatch=0.0,
             tag_flips=0)
  for c, ts, loss in results:
    mine, want = _host(ts), ref[c + 1]
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(mine)[0], jax.tree.leaves(want)):
      if b.size == 0:
        continue
      name = jax.tree_util.keystr(path)
      scale = max(float(np.max(np.abs(b))), SCALE_FLOOR.get(name, 0.0)) + 1e-30
      diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale
      off = float(np.mean(diff > 0.01))
      if off > run["off_fraction"]:
        run["off_fraction"], run["worst_leaf"] = off, f"{name} (chunk {c})"
      if name not in DISCRETE_LEAVES:
        run["max_rel_err"] = max(run["max_rel_err"], float(np.max(diff)))
    run["loss_err"] = max(run["loss_err"], abs(loss - ref_losses[c]))
    run["spike_mismatch"] = max(run["spike_mismatch"], float(np.mean(
        mine.brain_state.neurons.s != want.brain_state.neurons.s)))
    tags = lambda ts: ts.plastic.tag_W.astype(np.float32) > 0.5
    run["tag_flips"] = max(run["tag_flips"], int(np.sum(tags(mine) != tags(want))))
  return run


def _worker() -> dict:
  """One process, 8 devices: every mesh, pmap, and a checkpoint moved from 8 devices to 2."""
  import jax
  import numpy as np
  from neurogen_jax import checkpoint, sharding

  assert jax.device_count() == DEVICES, jax.devices()
  kw, ts0, chunk = _setup()
  out = {"timings_s": {}}

  def timed(name, fn):
    start = time.perf_counter()
    result = fn()
    out["timings_s"][name] = round(time.perf_counter() - start, 1)
    return result

  ref, ref_losses = timed("single_device", lambda: _single_device_run(kw, ts0, chunk))
  if os.environ.get(REFERENCE_ENV):
    _save_reference(os.environ[REFERENCE_ENV], ref, ref_losses)
  # Switched-off state is zero-size (here the unused random feedback); it must cross the
  # shard_map and pmap steps (XLA:CPU cannot compile them with zero-size operands).
  out["empty_leaves"] = [str(s) for _, s, _ in sharding._empty_leaves(ts0)]

  def run_mesh(data, model):
    mesh = sharding.make_mesh(data, model)
    step = sharding.sharded_train_chunk(mesh, ts0, **kw)
    results, kept = [], True
    for c in range(CHUNKS):
      ts, m = step(sharding.shard_train_state(ref[c], mesh), *(sharding.shard_batch(x, mesh) for x in chunk(c)))
      kept &= all(a.sharding == b for a, b in zip(jax.tree.leaves(ts), jax.tree.leaves(
          sharding.train_state_shardings(ts, mesh))))
      results.append((c, ts, float(m.loss)))
    out.setdefault("layout_kept", {})[f"{data}x{model}"] = bool(kept)
    return _compare(ref, ref_losses, results)

  # Data alone, and data with model (the model axis alone adds nothing the 2-D mesh does
  # not run: the same spike gathers and the same sums over the neuron shards; the pair of
  # processes runs a 4 x 2 mesh besides).
  for name, (data, model) in {"data_8": (8, 1), "data_2_model_4": (2, 4)}.items():
    out[name] = timed(name, lambda: run_mesh(data, model))

  # Save a state sharded over 8 devices (neurogen_jax.checkpoint); restore it onto 2 (data 1 x model 2: another
  # device count and another partitioning), bit-exact and in place; run the last chunk.
  def restore_and_continue():
    last = CHUNKS - 1
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "state")
      saved = sharding.shard_train_state(ref[last], sharding.make_mesh(8, 1))
      mesh = sharding.make_mesh(1, 2)
      target = sharding.abstract_train_state(kw["config"], kw["pcfg"], kw["optimizer"], BATCH, mesh)
      info = checkpoint.save(path, saved, rng=jax.random.PRNGKey(0), data_state=None, tokenizer=None,
                             brain_config=kw["config"], metadata={})
      ts, _ = checkpoint.restore(info.path, target)
    exact = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_host(ts)), jax.tree.leaves(ref[last])))
    placed = all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(ts), jax.tree.leaves(target)))
    step = sharding.sharded_train_chunk(mesh, ts, **kw)
    ts, m = step(ts, *(sharding.shard_batch(x, mesh) for x in chunk(last)))
    run = _compare(ref, ref_losses, [(last, ts, float(m.loss))])
    run.update(bit_exact=exact, placed=placed, saved_on=len(saved.params.tiles.sharding.device_set),
               restored_on=len(ts.params.tiles.sharding.device_set))
    return run

  out["restore_8_to_2"] = timed("restore_8_to_2", restore_and_continue)

  # Sharded init builds the same state as the plain one, already in place.
  def sharded_init():
    mesh = sharding.make_mesh(2, 4)
    ts = sharding.init_train_state(kw["config"], kw["pcfg"], kw["optimizer"], jax.random.PRNGKey(0),
                                   BATCH, mesh)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_host(ts)), jax.tree.leaves(ref[0])))
    return same, str(ts.brain_state.neurons.v.sharding.spec)

  out["sharded_init_equal"], out["sharded_init_spec"] = timed("sharded_init", sharded_init)

  # pmap over the 8 devices (learning.train_chunk's `axis_name` hook).
  def run_pmap():
    results = []
    for c in range(CHUNKS):
      ts, m = sharding.pmap_train_chunk(sharding.pmap_split(ref[c], DEVICES), *chunk(c), **kw)
      results.append((c, sharding.pmap_join(ts), float(m.loss)))
    return _compare(ref, ref_losses, results)

  out["pmap_8"] = timed("pmap_8", run_pmap)
  return out


def _multihost_worker() -> dict:
  """One of two processes of 4 devices (a data 4 x model 2 mesh across both): each feeds
  only its own streams; every chunk starts from the state of the single-device reference,
  the one the 8-device worker ran (the same program on one device, read from its file)."""
  import jax
  from jax.experimental import multihost_utils

  from neurogen_jax import sharding

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  assert sharding.initialize_distributed()
  kw, _, chunk = _setup(with_state=False)
  ref, ref_losses = _load_reference(os.environ[REFERENCE_ENV], kw)
  ts0 = ref[0]
  mesh = sharding.make_mesh(4, 2)
  rows = sharding.process_stream_slice(mesh, BATCH)
  step = sharding.sharded_train_chunk(mesh, ts0, **kw)
  results = []
  for c in range(CHUNKS):
    ts, m = step(sharding.shard_train_state(ref[c], mesh), *(sharding.shard_batch(x[rows], mesh) for x in chunk(c)))
    results.append((c, multihost_utils.process_allgather(ts, tiled=True), float(m.loss)))
  return {"process": jax.process_index(), "processes": jax.process_count(),
          "devices": jax.device_count(), "rows": [rows.start, rows.stop],
          "run": _compare(ref, ref_losses, results)}


# ------------------------------------------------------------------------- the tests

def _with_base_flags(flags: str) -> str:
  """`flags` after the suite's own XLA_FLAGS (tests/conftest.py), for a subprocess."""
  return f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def _run_worker(env: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=dict(os.environ, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, name: str) -> dict:
  try:
    stdout, stderr = proc.communicate(timeout=WORKER_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f"{name} worker did not finish in {WORKER_TIMEOUT_S} s")
  if proc.returncode:
    pytest.fail(f"{name} worker failed (exit {proc.returncode}):\n{stderr[-4000:]}")
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
  """The file the 8-device worker writes its single-device run to."""
  return str(tmp_path_factory.mktemp("sharding") / "single_device.pickle")


@pytest.fixture(scope="module")
def results(reference) -> dict:
  start = time.perf_counter()
  out = _result(_run_worker({"XLA_FLAGS": _with_base_flags(f"--xla_force_host_platform_device_count={DEVICES}"),
                             "JAX_PLATFORMS": "cpu", REFERENCE_ENV: reference}), "8-device")
  out["worker_s"] = round(time.perf_counter() - start, 1)
  print(json.dumps(out, indent=1))
  return out


@pytest.fixture(scope="module")
def multihost(results, reference) -> list[dict]:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [_run_worker({"XLA_FLAGS": _with_base_flags(f"--xla_force_host_platform_device_count={DEVICES // 2}"),
                        "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
                        REFERENCE_ENV: reference}) for i in range(2)]
  out = [_result(p, f"process {i}") for i, p in enumerate(procs)]
  print(json.dumps(out, indent=1))
  return out


def _tiny_shapes(batch: int, mode: str):
  import functools

  import jax

  from neurogen_jax import learning, plasticity
  from neurogen_jax.config import tiny_config

  config = tiny_config()
  init = functools.partial(learning.init_train_state, config, plasticity.PlasticityConfig(),
                           learning.make_optimizer(1e-3), batch=batch, mode=mode)
  return config, jax.eval_shape(init, jax.random.PRNGKey(0))


@pytest.mark.parametrize("mode", ["local", "bptt"])
def test_every_stream_and_neuron_axis_has_its_mesh_axis(mode):
  """A leaf added to the state later fails here until `sharding._LEAF_SPECS` names it."""
  import jax
  from jax.sharding import PartitionSpec as P

  from neurogen_jax import sharding

  batch = 7  # no other size of the tiny brain is 7; N = 2,496 and R = 156 are unique too
  config, shapes = _tiny_shapes(batch, mode)
  specs = jax.tree.leaves(sharding.train_state_specs(shapes), is_leaf=lambda x: isinstance(x, P))
  wanted = {batch: "data", config.num_neurons: "model", config.num_blocks: "model"}
  for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(shapes)[0], specs):
    for i, dim in enumerate(leaf.shape):
      got = spec[i] if i < len(spec) else None
      if dim in wanted:
        assert got == wanted[dim], f"{jax.tree_util.keystr(path)} {leaf.shape}: axis {i} -> {spec}"


def test_mesh_that_does_not_divide_the_streams_or_blocks_says_what_to_choose():
  from jax.sharding import AbstractMesh

  from neurogen_jax import sharding

  _, shapes = _tiny_shapes(7, "local")
  with pytest.raises(ValueError, match="multiple of 2"):
    sharding.train_state_shardings(shapes, AbstractMesh((2, 1), ("data", "model")))
  with pytest.raises(ValueError, match=r"156 row blocks .* model=5; choose model among \[1, 2, 3, 4, 6"):
    sharding.train_state_shardings(shapes, AbstractMesh((1, 5), ("data", "model")))


def test_single_process_needs_no_distributed_setup(monkeypatch):
  import numpy as np

  from neurogen_jax import sharding

  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert sharding.initialize_distributed() is False
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    sharding.initialize_distributed()
  mesh = sharding.make_mesh(1, 1)
  assert sharding.process_stream_slice(mesh, 7) == slice(0, 7)
  tokens = np.arange(14, dtype=np.int32).reshape(7, 2)
  np.testing.assert_array_equal(np.asarray(sharding.shard_batch(tokens, mesh)), tokens)


def test_a_single_process_cluster_step_needs_no_distributed_setup(monkeypatch):
  """Under `srun -n 1` jax's SLURM detection applies but there is nobody to join."""
  from neurogen_jax import sharding

  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  for name, value in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node001", SLURM_NTASKS="1",
                          SLURM_PROCID="0", SLURM_LOCALID="0").items():
    monkeypatch.setenv(name, value)
  assert sharding.detected_cluster() == ("slurm", 1)
  assert sharding.initialize_distributed() is False
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert sharding.detected_cluster() == ("slurm", 2)
  assert sharding.initialize_distributed(detect_cluster=False) is False  # asked not to look


def test_data_shards_of_one_process():
  from neurogen_jax import sharding

  assert sharding.data_shards(None, 8) == sharding.DataShards(1, (0,), True)
  assert sharding.data_shards(sharding.make_mesh(1, 1), 8) == sharding.DataShards(1, (0,), True)
  # One process reading the shards of a 4-host run side by side.
  assert sharding.data_shards(None, 8, num_shards=4) == sharding.DataShards(4, (0, 1, 2, 3), True)
  with pytest.raises(ValueError, match="num_shards=3 must divide the batch of 8 streams"):
    sharding.data_shards(None, 8, num_shards=3)


def _assert_equal_to_single_device(run: dict) -> None:
  assert run["loss_err"] < LOSS_TOL, run
  assert run["off_fraction"] <= OFF_FRACTION_TOL, run
  assert run["spike_mismatch"] <= SPIKE_MISMATCH_TOL, run


@pytest.mark.slow
@pytest.mark.parametrize("name, mesh", [("data_8", "8x1"), ("data_2_model_4", "2x4")])
def test_mesh_equals_single_device(results, name, mesh):
  _assert_equal_to_single_device(results[name])
  assert results["layout_kept"][mesh], "the step changed the state's layout"


@pytest.mark.slow
def test_restore_onto_other_device_count_continues_equal(results):
  run = results["restore_8_to_2"]
  assert run["bit_exact"] and run["placed"], run
  assert (run["saved_on"], run["restored_on"]) == (8, 2), run
  _assert_equal_to_single_device(run)


@pytest.mark.slow
def test_sharded_init_equals_plain_init(results):
  from jax.sharding import PartitionSpec as P
  assert results["sharded_init_equal"]
  assert results["sharded_init_spec"] == str(P("data", "model"))


@pytest.mark.slow
def test_pmap_equals_single_device(results):
  run = results["pmap_8"]
  _assert_equal_to_single_device(run)


@pytest.mark.slow
def test_mapped_steps_carried_zero_size_state(results):
  # The default rules keep no random feedback matrix: the runs above crossed shard_map and
  # pmap with a zero-size leaf (which XLA:CPU cannot compile as an operand).
  assert results["empty_leaves"], "no zero-size leaf: this file no longer covers them"


@pytest.mark.slow
def test_two_processes_feed_their_own_streams_and_equal_single_device(multihost):
  assert [(r["process"], r["processes"], r["devices"]) for r in multihost] == [(0, 2, 8), (1, 2, 8)]
  assert [r["rows"] for r in multihost] == [[0, BATCH // 2], [BATCH // 2, BATCH]]
  for process in multihost:
    _assert_equal_to_single_device(process["run"])


if __name__ == "__main__":
  print(json.dumps(_multihost_worker() if os.environ.get("JAX_NUM_PROCESSES") else _worker()))
