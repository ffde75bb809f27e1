"""Spreading a training run over devices: data-parallel streams, model-parallel neuron blocks.

One 2-D device mesh with axes ('data', 'model') (`make_mesh`):
- 'data' splits the B independent text streams: every per-stream array ([B, N] neuron
  state, [B] gates, the [B, L] token batch) is sharded on its leading axis; weights,
  optimizer and learning state are replicated. Learning averages over all streams, so the
  per-token tile update, the homeostatic rates and the chunk's readout gradient are
  reduced across devices: by hand where `learning.train_chunk` takes its batch means when
  it has the `axis_name` hook (`shard_map` over 'data'), else by XLA's SPMD partitioner.
- 'model' splits the neurons by row blocks, for brains larger than one device: tiles
  w_RxKxTxT and their connectivity on R, per-stream [B, N] and per-neuron [N] arrays on N.
  A post block's K pre blocks live anywhere, so each tick all-gathers the spike vector
  over 'model' (the gather by col_RxK, inserted by XLA); propagation and the neuron update
  are then local.
Both axes may be > 1 at once. The same jitted step runs; only where its inputs live and
how its reductions cross devices change (`shard_train_state`, `sharded_train_chunk`).

`pmap_train_chunk` keeps the seed's one-replica-per-device pattern (`jax.pmap` over the
local devices); it needs the `axis_name` hook.

Checkpoints restore onto any mesh through `abstract_train_state`; multi-host runs call
`initialize_distributed` once per process, and every process feeds its own rows of the
batch (`process_stream_slice`, `shard_batch`). docs/SHARDING.md has the measurements.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from neurogen_jax import learning
from neurogen_jax.config import BrainConfig
from neurogen_jax.learning import TrainState
from neurogen_jax.plasticity import PlasticityConfig

DATA = "data"
MODEL = "model"
PMAP_AXIS = "streams"

# How each TrainState leaf is laid out, by its field name (the last name in its pytree
# path; optimizer moments are dicts keyed by the parameter's name, so they follow it).
# Leaves not named here are replicated, and so is a named leaf whose axis does not split
# evenly over the mesh (w_in when the input areas do not); the tiles and the per-stream
# arrays must split (`_check_divisible` says how).
_STREAM_NEURON = P(DATA, MODEL)
_LEAF_SPECS = {
    # BrainState: per-stream [B] and per-neuron [N].
    "thal_gate_B": P(DATA),
    "bg_gate_B": P(DATA),
    "slow_BxNr": P(DATA),
    "theta_N": P(MODEL),
    "rate_N": P(MODEL),
    # Params and connectivity: tiles and their structure by post row block R, the token
    # drive's projection by the neurons it drives.
    "tiles": P(MODEL),
    "w_in": P(None, MODEL),
    "col_RxK": P(MODEL),
    "pathway_RxK": P(MODEL),
    "sign_N": P(MODEL),
    "area_N": P(MODEL),
    # PlasticState: tile-shaped learning state and per-neuron factors.
    "early_W": P(MODEL),
    "tag_W": P(MODEL),
    "feedback_DxN": P(None, MODEL),
    "replay_pre_MxN": P(None, MODEL),
    "replay_post_MxN": P(None, MODEL),
    "in_mean_2xN": P(None, MODEL),
}


# ------------------------------------------------------------------------------ meshes


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh of data x model devices.

  data=None takes all devices left over by `model`. Axes are `Auto`: XLA propagates the
  shardings of the inputs through the unchanged jitted step.
  """
  devices = jax.devices() if devices is None else list(devices)
  if model < 1 or len(devices) % model:
    raise ValueError(f"model={model} must divide the {len(devices)} devices")
  data = len(devices) // model if data is None else data
  if data < 1 or data * model > len(devices):
    raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, "
                     f"{len(devices)} are visible (jax.devices())")
  return jax.make_mesh((data, model), (DATA, MODEL), (AxisType.Auto, AxisType.Auto),
                       devices=devices[:data * model])


def _path_names(path) -> list[str]:
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
    elif isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
  return names


def _leaf_spec(path, leaf) -> P:
  names = _path_names(path)
  if "neurons" in names:  # NeuronState fields v, i, a, tr, s: [B, N]
    spec = _STREAM_NEURON
  else:
    spec = next((_LEAF_SPECS[n] for n in reversed(names) if n in _LEAF_SPECS), P())
  if 0 in leaf.shape:
    # An empty leaf (a switched-off rule's state) has nothing to split.
    return P()
  if len(spec) > len(leaf.shape):
    raise ValueError(f"leaf {'.'.join(names)} of shape {leaf.shape} cannot take sharding {spec}")
  return spec


def train_state_specs(ts: Any) -> Any:
  """PartitionSpec of every leaf of a TrainState (or of any of its sub-trees)."""
  return jax.tree_util.tree_map_with_path(_leaf_spec, ts)


def train_state_shardings(ts: Any, mesh: Mesh) -> Any:
  """NamedSharding of every leaf of `ts` (arrays or ShapeDtypeStructs) on `mesh`."""
  _check_divisible(ts, mesh)

  def sharding(spec, leaf):
    if any(axis is not None and dim % mesh.shape[axis] for axis, dim in zip(spec, leaf.shape)):
      spec = P()
    return NamedSharding(mesh, spec)

  return jax.tree.map(sharding, train_state_specs(ts), ts, is_leaf=lambda x: isinstance(x, P))


def _check_divisible(ts: Any, mesh: Mesh) -> None:
  """Clear errors for the two sizes a mesh must divide: streams and row blocks."""
  data, model = mesh.shape[DATA], mesh.shape[MODEL]
  bstate = getattr(ts, "brain_state", ts)
  if hasattr(bstate, "neurons"):
    b = bstate.neurons.v.shape[0]
    if b % data:
      raise ValueError(f"batch of {b} streams does not split over mesh data={data}; "
                       f"use a batch that is a multiple of {data}")
  params = getattr(ts, "params", ts)
  if hasattr(params, "tiles"):
    r = params.tiles.shape[0]
    if r % model:
      ok = [m for m in range(1, r + 1) if r % m == 0 and m <= 64]
      raise ValueError(f"the brain's {r} row blocks do not split over mesh model={model}; "
                       f"choose model among {ok}")


def shard_train_state(ts: TrainState, mesh: Mesh) -> TrainState:
  """Places `ts` on `mesh`: per-stream arrays split on 'data', neuron blocks on 'model'.

  Copies first: a replicated `device_put` reuses the source buffer on its own device
  (`may_alias=False` notwithstanding, jax 0.11), and `sharded_train_chunk` donates its
  input, which would delete `ts`'s arrays. A brain too large for one device is built in
  place by `init_train_state` (or restored onto `abstract_train_state`) instead.

  Several processes: a leaf held whole by this process (the same on every process, e.g.
  a fresh init or fine-tuning weights) goes through host memory, each process placing its
  own shards (jax 0.11 refuses device-to-device copies across hosts on CPU and GPU unless
  a transfer socket is set up); a global leaf is resharded on the devices.
  """
  def place(x, target):
    if jax.process_count() > 1 and getattr(x, "is_fully_addressable", True):
      return jax.device_put(np.asarray(x), target)
    return jax.device_put(jnp.copy(x), target)

  return jax.tree.map(place, ts, train_state_shardings(ts, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches [B, L]: streams split on 'data', replicated over 'model'."""
  return NamedSharding(mesh, P(DATA, None))


def shard_batch(tokens_BxL: Any, mesh: Mesh) -> jax.Array:
  """A global [B, L] batch from this process's rows (all B rows when single-process).

  Multi-host: each process passes only its rows `process_stream_slice(mesh, B)` of the
  global batch; the result is one global array (`jax.make_array_from_process_local_data`).
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(tokens_BxL))


def process_stream_slice(mesh: Mesh, global_batch: int) -> slice:
  """Which of the B global streams this process feeds (contiguous rows of the batch)."""
  return process_stream_slices(mesh, global_batch)[jax.process_index()]


# ----------------------------------------------------------------- sharded init / restore


def abstract_train_state(config: BrainConfig, pcfg: PlasticityConfig, optimizer, batch: int,
                         mesh: Mesh, mode: str = "local") -> TrainState:
  """ShapeDtypeStructs with shardings of `learning.init_train_state`'s result on `mesh`.

  The restore target of a checkpoint onto any mesh (any device count): orbax reads each
  shard of each array straight into place.
  """
  init = functools.partial(learning.init_train_state, config, pcfg, optimizer, batch=batch, mode=mode)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = train_state_shardings(shapes, mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_train_state(config: BrainConfig, pcfg: PlasticityConfig, optimizer, key: jax.Array,
                     batch: int, mesh: Mesh, mode: str = "local") -> TrainState:
  """`learning.init_train_state`, built directly in its sharded layout.

  No device ever holds the whole state (needed when the brain is larger than one device,
  and in multi-host runs, where every process calls this with the same key).
  """
  abstract = abstract_train_state(config, pcfg, optimizer, batch, mesh, mode)
  init = functools.partial(learning.init_train_state, config, pcfg, optimizer, batch=batch, mode=mode)
  shardings = jax.tree.map(lambda s: s.sharding, abstract)
  return jax.jit(init, out_shardings=shardings)(key)


# ------------------------------------------------------------------------ sharded steps


def sharded_train_chunk(mesh: Mesh, ts: Any, *, config: BrainConfig, pcfg: PlasticityConfig,
                        optimizer, mode: str = "local"):
  """`learning.train_chunk` on `mesh`, jitted with the layouts pinned at inputs and outputs.

  `ts` (arrays or ShapeDtypeStructs) gives the state's shapes. The returned function maps
  (ts, inputs_BxL, targets_BxL) -> (ts, ChunkMetrics): the state keeps the layout of
  `shard_train_state` chunk after chunk (one compilation, no re-layout; the input state's
  buffers are donated), and the metrics come back replicated, so every process can read
  them with `jax.device_get`.

  With `learning.train_chunk`'s `axis_name` hook, the streams are split by hand
  (`shard_map` over 'data', see `_split_streams_by_hand`) and the batch means are reduced
  where they are taken: per token one all-reduce of the tile update and a few vectors, the
  readout gradient once per chunk, nothing inside the tick loop. Otherwise XLA partitions
  the whole step, equally exact but with more traffic (docs/SHARDING.md). 'model' is
  always partitioned by XLA.
  """
  step = functools.partial(learning.train_chunk, config=config, pcfg=pcfg, optimizer=optimizer,
                           mode=mode)
  if _split_streams_by_hand(mesh, mode):
    streams = jax.tree.map(lambda per_stream: P(DATA) if per_stream else P(), _per_stream(ts))
    metrics = learning.ChunkMetrics(**{f: P(DATA) if f.endswith("_BxL") else P()
                                       for f in learning.ChunkMetrics._fields})
    # check_vma=False: the brain's scans and conds mix per-stream and shared values
    # without pvary annotations; the hook makes every shared output equal on all devices.
    manual = {DATA} if mesh.shape[MODEL] > 1 else set(mesh.axis_names)
    treedef, empty = jax.tree.structure(ts), _empty_leaves(ts)
    kept_specs = _drop_empty(jax.tree.map(lambda _, spec: spec, ts, streams), empty)
    mapped = jax.shard_map(_without_empty(functools.partial(step, axis_name=DATA), treedef, empty),
                           mesh=mesh, in_specs=(kept_specs, P(DATA), P(DATA)),
                           out_specs=(kept_specs, metrics), axis_names=manual, check_vma=False)

    def step(ts, inputs_BxL, targets_BxL):
      kept, metrics = mapped(_drop_empty(ts, empty), inputs_BxL, targets_BxL)
      return _with_empty(kept, treedef, empty), metrics
  ts_shardings = train_state_shardings(ts, mesh)
  tokens = batch_sharding(mesh)
  return jax.jit(step, in_shardings=(ts_shardings, tokens, tokens),
                 out_shardings=(ts_shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


# XLA:CPU (jax 0.11.2) segfaults compiling a `shard_map` or `pmap` that takes or returns a
# zero-size array, and a switched-off rule keeps its state as such arrays. They hold
# nothing, so the mapped step sees only the other leaves and rebuilds the empty ones as
# zeros of their shape and dtype; so does its caller.


def _empty_leaves(tree: Any, lead: int = 0) -> tuple:
  """((leaf index, shape without the first `lead` axes, dtype), ...) of the zero-size leaves."""
  return tuple((i, tuple(leaf.shape[lead:]), np.dtype(leaf.dtype))
               for i, leaf in enumerate(jax.tree.leaves(tree)) if 0 in leaf.shape)


def _drop_empty(tree: Any, empty: tuple) -> list:
  gone = {i for i, _, _ in empty}
  return [leaf for i, leaf in enumerate(jax.tree.leaves(tree)) if i not in gone]


def _with_empty(kept: list, treedef, empty: tuple, lead: tuple = (), zeros=jnp.zeros) -> Any:
  shapes = {i: (lead + shape, dtype) for i, shape, dtype in empty}
  it = iter(kept)
  return treedef.unflatten([zeros(*shapes[i]) if i in shapes else next(it)
                            for i in range(treedef.num_leaves)])


def _without_empty(step, treedef, empty: tuple):
  """step(ts, *args) -> (ts, out) as a function of the non-empty leaves of ts."""
  def inner(kept, *args):
    new_ts, out = step(_with_empty(kept, treedef, empty), *args)
    return _drop_empty(new_ts, empty), out
  return inner


def _split_streams_by_hand(mesh: Mesh, mode: str) -> bool:
  """Whether `sharded_train_chunk` maps the streams with `shard_map` (the `axis_name` hook).

  Fully manual when 'model' is 1. With 'model' partitioned, XLA (jax 0.11.2) fails on two
  partly manual programs, which therefore take its partitioning alone: a manual 'data'
  axis of size 1 ("Cross-partition allreduce must be in (partial) manual partitioning
  mode"; one data shard has nothing to reduce anyway) and the bptt gradient ("Invalid
  binary instruction opcode copy"; bptt has no per-token batch means, its gradient is
  reduced once per chunk either way).
  """
  return mesh.shape[MODEL] == 1 or (mesh.shape[DATA] > 1 and mode != "bptt")


# -------------------------------------------------------------------------------- pmap


def _per_stream(ts: Any) -> Any:
  """True for the leaves that hold one row per stream (sharded on 'data')."""
  return jax.tree.map(lambda spec: len(spec) > 0 and spec[0] == DATA, train_state_specs(ts),
                      is_leaf=lambda x: isinstance(x, P))


def pmap_split(ts: TrainState, num_devices: int | None = None) -> TrainState:
  """Global state -> pmap layout (host arrays; the first `pmap_train_chunk` places them).

  Every leaf gains a leading device axis D (default: all local devices): per-stream leaves
  split their B streams into D groups of B/D, all other leaves are copied D times.
  """
  n = jax.local_device_count() if num_devices is None else num_devices
  b = ts.brain_state.neurons.v.shape[0]
  if b % n:
    raise ValueError(f"batch of {b} streams does not split over {n} devices; use a multiple of {n}")

  def split(x, per_stream):
    x = np.asarray(x)
    return x.reshape((n, b // n) + x.shape[1:]) if per_stream else np.broadcast_to(x, (n,) + x.shape)

  return jax.tree.map(split, ts, _per_stream(ts))


def pmap_join(ts_D: TrainState) -> TrainState:
  """pmap layout -> global state (per-stream leaves concatenated, the rest from device 0)."""
  def join(x, per_stream):
    x = np.asarray(x)
    return jnp.asarray(x.reshape((-1,) + x.shape[2:]) if per_stream else x[0])

  return jax.tree.map(join, ts_D, _per_stream(ts_D))


@functools.lru_cache(maxsize=None)
def _pmapped_train_chunk(config, pcfg, optimizer, mode, num_devices, treedef, empty):
  step = functools.partial(learning.train_chunk, config=config, pcfg=pcfg, optimizer=optimizer,
                           mode=mode, axis_name=PMAP_AXIS)
  return jax.pmap(_without_empty(step, treedef, empty), axis_name=PMAP_AXIS,
                  devices=jax.local_devices()[:num_devices])


def pmap_train_chunk(ts_D: TrainState, inputs_BxL: Any, targets_BxL: Any, *, config: BrainConfig,
                     pcfg: PlasticityConfig, optimizer, mode: str = "local"
                     ) -> tuple[TrainState, learning.ChunkMetrics]:
  """`learning.train_chunk` under `jax.pmap`: one replica of the brain per local device.

  ts_D is in pmap layout (`pmap_split`, D = its leading axis); inputs/targets are the
  global int [B, L] batch, split over the devices like the streams. The readout gradient
  and every plasticity update are averaged over all B streams (pmean/psum inside), so the
  result equals the single-device step. Metrics come back global: scalars once, [B, L].
  """
  n = ts_D.step.shape[0]
  split = lambda x: np.asarray(x).reshape((n, -1) + np.shape(x)[1:])
  treedef, empty = jax.tree.structure(ts_D), _empty_leaves(ts_D, lead=1)
  step = _pmapped_train_chunk(config, pcfg, optimizer, mode, n, treedef, empty)
  kept_D, m_D = step(_drop_empty(ts_D, empty), split(inputs_BxL), split(targets_BxL))
  ts_D = _with_empty(kept_D, treedef, empty, lead=(n,), zeros=np.zeros)
  # Per-token [D, B/D, L] fields join into [B, L]; the rest is equal on every device.
  metrics = learning.ChunkMetrics(**{
      f: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]) if f.endswith("_BxL") else x[0],
                      getattr(m_D, f)) for f in learning.ChunkMetrics._fields})
  return ts_D, metrics


# -------------------------------------------------------------------------- multi-host


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, detect_cluster: bool = True) -> bool:
  """`jax.distributed.initialize` for multi-host runs; a no-op for a single process.

  Call once per process, before anything touches a device (the first thing in a main).

  Arguments left None come from the environment: JAX_COORDINATOR_ADDRESS ('host:port' of
  process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID. With all three known, every process
  sees all devices of its host (JAX_LOCAL_DEVICE_IDS narrows that). With none of them,
  and `detect_cluster`, a cluster that jax's own auto-detection recognises (a SLURM `srun`
  step, Open MPI's `mpirun`, Cloud TPU; not Kubernetes, whose detection fires in any pod)
  and that reports more than one process is initialised the way jax does it: address,
  count and id from the cluster, and one device per process when the cluster names a
  local rank (set JAX_LOCAL_DEVICE_IDS=0,1,...,7 for one process per 8-GPU host).

  Returns:
    True when this is one process of several.

  Raises:
    ValueError: some but not all of the three settings are given and no cluster supplies
      the rest.
  """
  env = os.environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if num_processes == 1:
    return False
  if None not in (address, num_processes, process_id):
    # 'deactivate': a SLURM allocation around the command must not narrow each process to
    # one local device (jax's detection would set local_device_ids to the SLURM local rank).
    jax.distributed.initialize(address, num_processes, process_id,
                               cluster_detection_method="deactivate")
    return jax.process_count() > 1
  cluster = detected_cluster() if detect_cluster else None
  if cluster is not None and cluster[1] > 1:
    jax.distributed.initialize(address, num_processes, process_id)
    return jax.process_count() > 1
  if (address, num_processes, process_id) == (None, None, None):
    return False
  raise ValueError(
      "multi-host needs all of coordinator address, number of processes and process id "
      f"(got address={address!r}, num_processes={num_processes}, process_id={process_id}); set "
      "JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host "
      "(or --coordinator_address, --num_processes, --process_id)")


def detected_cluster() -> tuple[str, int] | None:
  """(name, number of processes) of the cluster jax would auto-detect, else None.

  Uses jax's cluster registry (`jax._src.clusters`, private; None if it moves). Kubernetes
  is left out: its detection needs the `kubernetes` package and fires in every pod.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    cluster_types = list(clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return None
  for cluster in cluster_types:
    if cluster.opt_in_only_method or not cluster.name or cluster.name == "k8s":
      continue
    try:
      if cluster.is_env_present():
        return cluster.name, int(cluster.get_process_count())
    except Exception:  # pylint: disable=broad-except  # a half-set environment: not this one
      continue
  return None


def is_primary() -> bool:
  """Whether this is process 0, the one that writes shared files and logs."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `barrier(name)` (same name everywhere); no-op alone."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def broadcast_ints(values: Any) -> np.ndarray:
  """Process 0's int64 vector `values`, on every process (each passes a vector of the same size)."""
  values = np.asarray(values, np.int64)
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.broadcast_one_to_all(values))


def allgather_ints(values: Any) -> np.ndarray:
  """[processes, n]: every process's int64 vector `values` (all of the same size n)."""
  values = np.asarray(values, np.int64).reshape(-1)
  if jax.process_count() == 1:
    return values[None]
  return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), -1)


def replicate(x: Any, mesh: Mesh) -> jax.Array:
  """`x` (the same on every process) as one array replicated over every device of `mesh`."""
  return jax.device_put(np.asarray(x), NamedSharding(mesh, P()))


def process_stream_slices(mesh: Mesh, global_batch: int) -> dict[int, slice]:
  """{process index: the streams (rows of the batch) it feeds} for every process of `mesh`.

  Processes on different 'data' rows of the mesh hold disjoint streams; processes that
  differ only along 'model' hold the same ones (and read the same data).
  """
  rows: dict[int, set[int]] = {}
  for device, index in batch_sharding(mesh).devices_indices_map((global_batch, 1)).items():
    rows.setdefault(device.process_index, set()).update(range(*index[0].indices(global_batch)))
  slices = {}
  for process, held in sorted(rows.items()):
    lo, hi = min(held), max(held) + 1
    if len(held) != hi - lo:
      raise ValueError(f"process {process} holds non-contiguous streams {sorted(held)}; build the "
                       "mesh with devices ordered by process (make_mesh does)")
    slices[process] = slice(lo, hi)
  return slices


class DataShards(NamedTuple):
  """How the document stream is split among the streams (rows) of the batch.

  count: S shards; shard s feeds streams s*B/S .. (s+1)*B/S - 1.
  local: the shards of this process's streams, in row order.
  writer: whether this process saves the data state of its shards and counts their bytes
    (the lowest-numbered process holding those streams).
  """

  count: int
  local: tuple[int, ...]
  writer: bool


def data_shards(mesh: Mesh | None, global_batch: int, num_shards: int = 0) -> DataShards:
  """The data shards of this process: one per group of processes feeding the same streams
  unless `num_shards` (> 0) asks for more (a multiple of the number of groups, dividing B).

  A single process with num_shards=S reads the S shards an S-host run reads, side by side:
  the same global batches, so it can continue (or check) that run.
  """
  if mesh is None:
    slices = {jax.process_index(): slice(0, global_batch)}
  else:
    slices = process_stream_slices(mesh, global_batch)
  groups = sorted({(s.start, s.stop) for s in slices.values()})
  count = int(num_shards) or len(groups)
  if count < 1 or global_batch % count:
    raise ValueError(f"data.num_shards={count} must divide the batch of {global_batch} streams")
  per_shard = global_batch // count
  if any(lo % per_shard or hi % per_shard for lo, hi in groups):
    raise ValueError(f"data.num_shards={count} does not split the {len(groups)} processes' streams "
                     f"({', '.join(f'{lo}..{hi - 1}' for lo, hi in groups)}) into whole shards; use "
                     f"a multiple of {len(groups)}")
  mine = slices[jax.process_index()]
  writer = min(p for p, s in slices.items() if s == mine) == jax.process_index()
  return DataShards(count, tuple(range(mine.start // per_shard, mine.stop // per_shard)), writer)
