"""Checkpoints of a training run: orbax arrays plus JSON, written atomically, restored exactly.

Layout of `RUN/checkpoints/`:

  checkpoint_step_N/
    state/             orbax composite, one item per `TrainState` field and the RNG key:
                       params (connectivity included), opt_state, brain_state, plastic,
                       step, rng
    data_state.json    the data iterator's state (the token stream resumes where it was);
                       a run whose data is split into S shards (several hosts) has one
                       `data_state-0000i-of-0000S.json` per shard instead
    tokenizer/         the tokenizer (`tokenizer.model` or `byte_tokenizer.json`)
    metadata.json      config, step, tokens, loss, time, and a manifest: the size and
                       sha256 of every other file, checked on restore
  checkpoint_step_N.json   the same metadata beside the directory, for people and tools

Atomicity: everything is written into a hidden `.tmp-checkpoint_step_N-*` sibling; once
orbax has finalised its part and the manifest is written, the directory is renamed to
`checkpoint_step_N` (one `rename`, atomic on a POSIX file system), then the metadata
JSON beside it is written through a temporary file and `os.replace`. A crash therefore
leaves either a complete checkpoint or a hidden leftover that listing ignores (and the
next save removes). Old checkpoints are hidden by a rename before they are deleted.
With several processes, all write into the same hidden directory (orbax: each its array
shards; each its data shards), and process 0 alone does the rest, between barriers.
A write that fails (disk full, directory not writable) removes its hidden directory and
raises CheckpointError naming the directory, the cause and what to do; the checkpoints
already there are untouched. (Test-only: `NEUROGEN_TEST_SAVE_DELAY_S` makes `save` sleep
between writing the hidden directory and renaming it, so tests can kill it there.)

Exactness: arrays are stored with their dtype (bf16 tiles stay bf16), so a restore
gives back the very bits that were saved. Orbax cannot store zero-size arrays (the
tiles-shaped state of a switched-off plasticity mechanism): they are left out and
rebuilt from the abstract tree on restore.

Restoring needs the abstract target tree (shapes and dtypes, no values); build it from
the configs with `abstract_train_state` (a `jax.eval_shape` of the initialiser).
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from neurogen_jax import brain, learning, sharding
from neurogen_jax import tokenizer as tokenizer_lib
from neurogen_jax.brain import BrainState, Params
from neurogen_jax.config import BrainConfig
from neurogen_jax.learning import TrainState
from neurogen_jax.plasticity import PlasticityConfig

FORMAT_VERSION = 1
PREFIX = "checkpoint_step_"
STATE_DIR = "state"
DATA_STATE_FILE = "data_state.json"
TOKENIZER_DIR = "tokenizer"
METADATA_FILE = "metadata.json"
RNG_ITEM = "rng"
STATE_ITEMS = TrainState._fields + (RNG_ITEM,)

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)$")
_HASH_BLOCK = 1 << 20
_ROOT_LEAF = "value"  # the name of a tree that is a single array (step, rng)


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """A complete checkpoint directory and its step."""

  path: Path
  step: int

  @property
  def metadata_path(self) -> Path:
    """The metadata JSON beside the directory."""
    return self.path.with_name(self.path.name + ".json")


class LoadedBrain(NamedTuple):
  """What inference needs from a checkpoint (see `load_brain`); `tokenizer` is None when
  the checkpoint was saved without one (`NeuroGenModel` works on token ids)."""

  params: Params
  brain_state: BrainState
  config: BrainConfig
  tokenizer: Any
  metadata: dict


# ------------------------------------------------------------------------------ listing


def checkpoint_path(checkpoint_dir: str | os.PathLike, step: int) -> Path:
  return Path(checkpoint_dir) / f"{PREFIX}{int(step)}"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[CheckpointInfo]:
  """Complete checkpoints in `checkpoint_dir`, oldest first (hidden leftovers ignored)."""
  root = Path(checkpoint_dir)
  if not root.is_dir():
    return []
  found = []
  for entry in root.iterdir():
    match = _NAME_RE.match(entry.name)
    if match and entry.is_dir():
      found.append(CheckpointInfo(entry, int(match.group(1))))
  return sorted(found, key=lambda c: c.step)


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> CheckpointInfo | None:
  checkpoints = list_checkpoints(checkpoint_dir)
  return checkpoints[-1] if checkpoints else None


def find_checkpoint(path: str | os.PathLike) -> Path:
  """A checkpoint directory from a checkpoint, a `checkpoints/` directory or a run directory.

  For the last two, the latest checkpoint inside. Raises CheckpointError when there is none.
  """
  path = Path(path)
  if (path / METADATA_FILE).is_file() or _NAME_RE.match(path.name):
    if not path.is_dir():
      raise CheckpointError(f"{path}: no such checkpoint directory.")
    return path
  for root in (path, path / "checkpoints"):
    latest = latest_checkpoint(root)
    if latest is not None:
      return latest.path
  raise CheckpointError(f"{path}: no checkpoint found (looked for {PREFIX}N directories in it and "
                        f"in {path / 'checkpoints'}). Pass a run directory or a {PREFIX}N "
                        "directory.")


# ------------------------------------------------------------------------------- saving


def save(checkpoint_dir: str | os.PathLike, train_state: TrainState, *, rng: jax.Array,
         data_state: Mapping[str, Any] | None, tokenizer: Any, brain_config: BrainConfig,
         metadata: Mapping[str, Any], keep: int = 3,
         data_shards: Mapping[int, Mapping[str, Any]] | None = None,
         num_data_shards: int = 1) -> CheckpointInfo:
  """Writes `checkpoint_step_{train_state.step}` atomically and keeps the newest `keep`.

  Multi-process (`jax.process_count() > 1`): every process calls `save` with the same
  arguments except `data_shards`. Orbax writes each array's shards from the processes
  that hold them (one copy of replicated arrays, from process 0); each process writes its
  own `data_shards`; process 0 alone writes the JSON, the tokenizer and the manifest,
  renames the directory into place and removes old checkpoints. Barriers keep the steps
  apart, and `save` returns on every process only once the checkpoint is complete, so no
  process can see it half written. The checkpoint directory must be on a file system
  all processes share.

  Args:
    checkpoint_dir: where checkpoints live (created if missing).
    train_state: the full training state; every leaf is saved exactly. Multi-process:
      global arrays (on a mesh of every process's devices).
    rng: the run's PRNG key (raw uint32 or typed); multi-process: replicated on the mesh.
    data_state: the data iterator's `get_state()` (JSON-serialisable), or None; written by
      process 0 (`DATA_STATE_FILE`).
    tokenizer: anything with `save(directory)` (see `neurogen_jax.tokenizer`), or None.
    brain_config: the brain's config; `load_brain` rebuilds the brain from it.
    metadata: JSON-serialisable facts about the run (config, tokens, loss, ...); `step`,
      `time`, `format_version`, `brain_config`, `batch_size` and `manifest` are added.
    keep: how many checkpoints to keep (the newest); 0 keeps all.
    data_shards: {shard index: data state} of the shards this process saves (written as
      `data_state_file(shard, num_data_shards)`, see `read_data_shards`).
    num_data_shards: how many shards the run's data has.

  Returns:
    The new checkpoint. A checkpoint of the same step is replaced.
  """
  root = Path(checkpoint_dir)
  primary = sharding.is_primary()
  step = int(jax.device_get(train_state.step))
  final = checkpoint_path(root, step)
  tmp = root / f"{_TMP_PREFIX}{final.name}-{_shared_token()}"
  failure = None
  if primary:
    try:
      root.mkdir(parents=True, exist_ok=True)
      _remove_leftovers(root)
      tmp.mkdir()
    except OSError as e:
      failure = e
  # (A barrier.) Every process learns whether process 0 made the directory.
  if not _primary_succeeded(failure is None):
    if failure is not None:
      raise CheckpointError(_write_failure(root, step, failure)) from failure
    raise CheckpointError(f"{root}: process 0 could not make the hidden directory of checkpoint "
                          f"step {step}; its log says why.")
  try:
    items = {name: _flatten(getattr(train_state, name)) for name in TrainState._fields}
    items[RNG_ITEM] = _flatten(_raw_key(rng))
    args = {name: ocp.args.StandardSave(flat) for name, flat in items.items() if flat}
    with _checkpointer() as checkpointer:
      checkpointer.save(tmp / STATE_DIR, args=ocp.args.Composite(**args))
    for shard, state in (data_shards or {}).items():
      (tmp / data_state_file(shard, num_data_shards)).write_text(json.dumps(state))
  except BaseException as e:
    if not _is_write_failure(e):  # interrupted, or a bug: no agreement, as before
      if primary:
        shutil.rmtree(tmp, ignore_errors=True)
      raise
    failure = e
  # (A barrier.) Every process has written its part, or failed to: then all fail together.
  if not _all_succeeded(failure is None):
    if primary:
      shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
      raise CheckpointError(_write_failure(root, step, failure)) from failure
    raise CheckpointError(f"{root}: another process could not write its part of checkpoint step "
                          f"{step} (its log says why); the hidden directory was removed.")
  error = None
  if primary:
    try:
      _finish(tmp, final, data_state=data_state, tokenizer=tokenizer, brain_config=brain_config,
              metadata=metadata, train_state=train_state, step=step, keep=keep)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised below, after telling the others
      shutil.rmtree(tmp, ignore_errors=True)
      error = e
  # The last barrier says whether process 0 finished: the others fail with it, not hang.
  if not _primary_succeeded(error is None) and error is None:
    raise CheckpointError(f"{final}: process 0 failed to complete this checkpoint; its log says why.")
  if error is not None:
    raise error
  return CheckpointInfo(final, step)


def _finish(tmp: Path, final: Path, *, data_state, tokenizer, brain_config, metadata, train_state,
            step: int, keep: int) -> None:
  """Process 0's part of `save`: the JSON files, the tokenizer, the manifest, the rename.

  A write that fails removes `tmp` and raises CheckpointError (see `_write_failure`).
  """
  root = final.parent
  try:
    if data_state is not None:
      (tmp / DATA_STATE_FILE).write_text(json.dumps(data_state))
    if tokenizer is not None:  # the NeuroGenModel API works on token ids and has none
      tokenizer.save(tmp / TOKENIZER_DIR)
    now = time.time()
    meta = dict(metadata)
    meta.update(format_version=FORMAT_VERSION, step=step, time=now,
                time_utc=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
                brain_config=config_to_dict(brain_config),
                batch_size=int(train_state.brain_state.neurons.v.shape[0]),
                manifest=_manifest(tmp))
    text = json.dumps(meta, indent=1, default=_json_default)
    (tmp / METADATA_FILE).write_text(text)
    _test_hook_delay()
    if final.exists():
      _discard(final)
    os.rename(tmp, final)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if _is_write_failure(e):
      raise CheckpointError(_write_failure(root, step, e)) from e
    raise
  try:
    _write_atomic(final.with_name(final.name + ".json"), text)
  except OSError as e:
    raise CheckpointError(f"{final}: written completely, but not the copy of its metadata "
                          f"beside it. {_write_failure(root, step, e)}") from e
  if keep > 0:
    for old in list_checkpoints(root)[:-keep]:
      old.metadata_path.unlink(missing_ok=True)
      _discard(old.path)


def _primary_succeeded(ok: bool) -> bool:
  """Process 0's `ok`, on every process (a barrier); `ok` itself when alone."""
  return bool(sharding.broadcast_ints([ok])[0])


def data_state_file(shard: int, num_shards: int) -> str:
  """The file of data shard `shard` of `num_shards` in a checkpoint."""
  return f"data_state-{int(shard):05d}-of-{int(num_shards):05d}.json"


def _all_succeeded(ok: bool) -> bool:
  """Whether `ok` on every process (an all-gather, so a barrier); `ok` itself when alone."""
  return bool(sharding.allgather_ints([ok]).all())


def _shared_token() -> str:
  """A random name part, the same on every process (process 0 draws it)."""
  token = sharding.broadcast_ints([int.from_bytes(os.urandom(4), "little")])
  return f"{os.getpid() if jax.process_count() == 1 else 'p0'}-{int(token[0]):08x}"


# Test-only: seconds to sleep after a save has written everything into its hidden
# directory and before the rename that publishes it (tests kill the process there).
TEST_SAVE_DELAY_ENV = "NEUROGEN_TEST_SAVE_DELAY_S"

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")
_NOT_WRITABLE_TEXT = ("Permission denied", "Read-only file system", "Operation not permitted")


def _test_hook_delay() -> None:
  delay = os.environ.get(TEST_SAVE_DELAY_ENV)
  if delay:
    time.sleep(float(delay))


def _is_write_failure(error: BaseException) -> bool:
  """An OSError, or another library's error (orbax/tensorstore wrap them) that reports one."""
  if isinstance(error, OSError):
    return True
  text = str(error)
  return isinstance(error, Exception) and any(
      t in text for t in _NO_SPACE_TEXT + _NOT_WRITABLE_TEXT)


def _write_failure(root: Path, step: int, error: BaseException) -> str:
  """What went wrong writing checkpoint `step` into `root`, and what to do about it."""
  code = getattr(error, "errno", None)
  text = str(error)
  if code in _NO_SPACE or any(t in text for t in _NO_SPACE_TEXT):
    advice = (f"The disk holding {root} is full: free space there (e.g. lower "
              "train.keep_checkpoints), or pass a --run_dir on another disk.")
  elif code in _NOT_WRITABLE or any(t in text for t in _NOT_WRITABLE_TEXT):
    advice = (f"{root} is not writable: make it writable (chmod u+w {root}) or pass a "
              "--run_dir you can write to.")
  else:
    advice = f"Check that {root} is on a working, writable disk."
  latest = latest_checkpoint(root) if root.is_dir() else None
  kept = (f" The previous checkpoint {latest.path} is intact." if latest is not None
          else " No earlier checkpoint exists in it.")
  return (f"{root}: cannot write checkpoint step {step} ({type(error).__name__}: "
          f"{text[:300]}). {advice}{kept}")


def _checkpointer() -> ocp.Checkpointer:
  """A synchronous composite checkpointer that knows every item (so metadata is readable)."""
  handlers = {name: ocp.StandardCheckpointHandler() for name in STATE_ITEMS}
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**handlers))


def _remove_leftovers(root: Path) -> None:
  """Removes hidden directories of interrupted saves and deletions (one writer per run)."""
  for entry in root.iterdir():
    if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
      shutil.rmtree(entry, ignore_errors=True)


def _discard(path: Path) -> None:
  """Hides `path` by a rename, then deletes it: it never looks complete while half deleted."""
  trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
  os.rename(path, trash)
  shutil.rmtree(trash, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _manifest(directory: Path) -> dict[str, list]:
  """{relative path: [size in bytes, sha256]} of every file below `directory`."""
  files = sorted(p for p in directory.rglob("*") if p.is_file())
  return {p.relative_to(directory).as_posix(): [p.stat().st_size, _sha256(p)] for p in files}


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, _HASH_BLOCK), b""):
      digest.update(block)
  return digest.hexdigest()


def _raw_key(key: jax.Array) -> jax.Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return jnp.asarray(key)


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, Path):
    return str(value)
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------- leaves by name


def _leaf_name(path: Sequence[Any]) -> str:
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return ".".join(parts) or _ROOT_LEAF


def _flatten(tree: Any) -> dict[str, Any]:
  """{dotted leaf name: leaf} of the non-empty leaves (orbax cannot store size-0 arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(path): leaf for path, leaf in leaves if math.prod(leaf.shape) > 0}


# ---------------------------------------------------------------------------- reading


def read_metadata(path: str | os.PathLike) -> dict:
  """The metadata of checkpoint `path` (its `metadata.json`)."""
  file = Path(path) / METADATA_FILE
  if not file.is_file():
    raise CheckpointError(f"{file}: missing, so {path} is not a complete checkpoint. Pass a "
                          f"{PREFIX}N directory written by neurogen_jax, or delete this one.")
  try:
    meta = json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"{file}: unreadable ({type(e).__name__}: {e}); the checkpoint is "
                          "corrupt. Delete its directory to fall back to an older checkpoint."
                          ) from e
  if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
    found = meta.get("format_version") if isinstance(meta, dict) else None
    raise CheckpointError(f"{file}: checkpoint format version {found!r}, this code reads version "
                          f"{FORMAT_VERSION}. Use the neurogen_jax version that wrote it.")
  return meta


def verify(path: str | os.PathLike) -> None:
  """Checks every file of checkpoint `path` against its manifest (size, then sha256).

  Raises:
    CheckpointError: naming the first missing, truncated or corrupt file.
  """
  path = Path(path)
  manifest = read_metadata(path).get("manifest", {})
  advice = (f"The checkpoint {path} is damaged: delete it to resume from an older one, or "
            "restore it from a copy.")
  for name, (size, digest) in manifest.items():
    file = path / name
    if not file.is_file():
      raise CheckpointError(f"{file}: missing. {advice}")
    actual = file.stat().st_size
    if actual != size:
      raise CheckpointError(f"{file}: {actual} bytes, {size} were written (truncated or "
                            f"overwritten). {advice}")
    if _sha256(file) != digest:
      raise CheckpointError(f"{file}: contents differ from what was written (sha256 mismatch). "
                            f"{advice}")


def read_data_state(path: str | os.PathLike) -> dict | None:
  """The data iterator state saved with checkpoint `path` (None when none was saved)."""
  file = Path(path) / DATA_STATE_FILE
  if not file.is_file():
    return None
  try:
    return json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"{file}: unreadable data state ({type(e).__name__}: {e}).") from e


def read_data_shards(path: str | os.PathLike, shards: Sequence[int],
                     num_shards: int) -> dict[str, Any]:
  """{str(shard): data state} of the listed shards of checkpoint `path` (see `save`)."""
  out = {}
  for shard in shards:
    file = Path(path) / data_state_file(shard, num_shards)
    if not file.is_file():
      present = sorted(p.name for p in Path(path).glob("data_state*.json"))
      raise CheckpointError(f"{file}: missing; the checkpoint holds data states {present}. Resume "
                            "with the data shards it was saved with (data.num_shards).")
    try:
      out[str(shard)] = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise CheckpointError(f"{file}: unreadable data state ({type(e).__name__}: {e}).") from e
  return out


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer saved with checkpoint `path`."""
  directory = Path(path) / TOKENIZER_DIR
  try:
    return tokenizer_lib.load_tokenizer(directory)
  except (OSError, RuntimeError) as e:
    raise CheckpointError(f"{directory}: cannot load the tokenizer ({e}).") from e


def abstract_train_state(config: BrainConfig, pcfg: PlasticityConfig, optimizer, batch: int,
                         mode: str) -> TrainState:
  """Shapes and dtypes (no values) of `learning.init_train_state`'s result."""
  init = functools.partial(learning.init_train_state, config, pcfg, optimizer, batch=batch,
                           mode=mode)
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def restore_training_run(path: str | os.PathLike, *, device: jax.Device | None = None
                         ) -> tuple[TrainState, jax.Array]:
  """(TrainState, rng) of a checkpoint written by the Trainer, rebuilt from its metadata
  alone (brain and plasticity configs, optimizer, batch size and mode)."""
  meta = read_metadata(path)
  brain_config = config_from_dict(BrainConfig, meta["brain_config"])
  pcfg = config_from_dict(PlasticityConfig, meta["signature"]["plasticity_config"])
  train = meta["config"]["train"]
  optimizer = learning.make_optimizer(train["learning_rate"],
                                      decay_steps=int(train.get("lr_decay_chunks", 0)))
  abstract = abstract_train_state(brain_config, pcfg, optimizer, meta["batch_size"], meta["mode"])
  return restore(path, abstract, device=device)


def restore(path: str | os.PathLike, abstract: TrainState, *, device: jax.Device | None = None,
            verify_files: bool = True) -> tuple[TrainState, jax.Array]:
  """(train state, raw RNG key) of checkpoint `path`, bit-exact.

  Args:
    path: a `checkpoint_step_N` directory.
    abstract: the target's shapes and dtypes, from `abstract_train_state`. Leaves that
      carry a sharding (`sharding.abstract_train_state(..., mesh)`) are read straight into
      that layout, on any number of devices; the others go to `device`.
    device: where unsharded leaves go (default: this process's first device).
    verify_files: check sizes and hashes against the manifest first.

  Raises:
    CheckpointError: a damaged file, or arrays that do not match `abstract` (named).
  """
  abstract_items = dict(abstract._asdict())
  abstract_items[RNG_ITEM] = jax.ShapeDtypeStruct((2,), jnp.uint32)
  items = restore_items(path, abstract_items, device=device, verify_files=verify_files)
  rng = items.pop(RNG_ITEM)
  return TrainState(**items), rng


def restore_items(path: str | os.PathLike, abstract: Mapping[str, Any], *,
                  device: jax.Device | None = None, verify_files: bool = True) -> dict[str, Any]:
  """Restores the named items (a subset of `STATE_ITEMS`) of checkpoint `path`.

  `abstract[name]` is the item's tree of ShapeDtypeStructs; zero-size leaves come back as
  zeros, the others exactly as saved. Raises CheckpointError listing every leaf whose
  presence, shape or dtype differs from the checkpoint.
  """
  path = Path(path)
  if verify_files:
    verify(path)
  else:
    read_metadata(path)
  state_dir = path / STATE_DIR
  device = device or jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  try:
    with _checkpointer() as checkpointer:
      saved_meta = checkpointer.metadata(state_dir).item_metadata
      targets, problems = {}, []
      for name, tree in abstract.items():
        wanted = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding or sharding)
                  for k, v in _flatten(tree).items()}
        item_meta = saved_meta.get(name) if saved_meta is not None else None
        if item_meta is None and (state_dir / name).is_dir():
          raise CheckpointError(f"{state_dir / name}: its array metadata is missing or unreadable; "
                                "the checkpoint is damaged. Delete it to resume from an older one.")
        saved = {} if item_meta is None else {k: v for k, v in item_meta.tree.items()}
        problems += _leaf_problems(name, saved, wanted)
        if wanted:
          targets[name] = ocp.args.StandardRestore(wanted)
      if problems:
        raise CheckpointError(
            f"{state_dir}: the saved arrays do not match the current configuration:\n  "
            + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
            + "\nRestore with the configuration the checkpoint was saved with (see "
            f"{path / METADATA_FILE}).")
      restored = (checkpointer.restore(state_dir, args=ocp.args.Composite(**targets))
                  if targets else {})
  except CheckpointError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for damaged data
    raise CheckpointError(f"{state_dir}: cannot read the saved arrays ({type(e).__name__}: "
                          f"{str(e)[:500]}). The checkpoint is damaged: delete it to resume from "
                          "an older one.") from e
  out = {}
  for name, tree in abstract.items():
    values = restored[name] if name in targets else {}
    out[name] = _unflatten(tree, values, sharding)
  return out


def _leaf_problems(item: str, saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
  problems = []
  for key in sorted(set(saved) | set(wanted)):
    label = item if key == _ROOT_LEAF else f"{item}.{key}"
    if key not in saved:
      problems.append(f"{label}: not in the checkpoint, expected {_describe(wanted[key])}")
    elif key not in wanted:
      problems.append(f"{label}: in the checkpoint ({_describe(saved[key])}), not expected now")
    elif (tuple(saved[key].shape) != tuple(wanted[key].shape)
          or np.dtype(saved[key].dtype) != np.dtype(wanted[key].dtype)):
      problems.append(f"{label}: checkpoint has {_describe(saved[key])}, expected "
                      f"{_describe(wanted[key])}")
  return problems


def _describe(leaf: Any) -> str:
  return f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}"


def _unflatten(abstract: Any, values: Mapping[str, Any], sharding) -> Any:
  paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = []
  for path, leaf in paths:
    name = _leaf_name(path)
    if math.prod(leaf.shape) == 0:
      leaves.append(jax.device_put(jnp.zeros(leaf.shape, leaf.dtype), leaf.sharding or sharding))
    else:
      leaves.append(values[name])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def load_brain(path: str | os.PathLike, *, device: jax.Device | None = None) -> LoadedBrain:
  """Params, brain state, config, tokenizer and metadata of a checkpoint, for inference.

  `path` may be a checkpoint, a `checkpoints/` directory or a run directory (latest).
  A brain trained with the Pallas kernels loads with implementation "xla" where the device
  is not a GPU (the same function; the compiled kernels need one).
  """
  path = find_checkpoint(path)
  meta = read_metadata(path)
  try:
    config = config_from_dict(BrainConfig, meta["brain_config"])
    batch = int(meta["batch_size"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path / METADATA_FILE}: no usable brain_config/batch_size "
                          f"({type(e).__name__}: {e}).") from e
  if config.implementation == "pallas" and (device or jax.devices()[0]).platform != "gpu":
    config = config.replace(implementation="xla")
  params, state = jax.eval_shape(functools.partial(brain.init, config, batch=batch),
                                 jax.random.PRNGKey(0))
  items = restore_items(path, {"params": params, "brain_state": state}, device=device)
  tokenizer = load_tokenizer(path) if (path / TOKENIZER_DIR).is_dir() else None
  return LoadedBrain(items["params"], items["brain_state"], config, tokenizer, meta)


# ------------------------------------------------------------ configs as JSON and back


def config_to_dict(config: Any) -> dict:
  """A frozen config dataclass (nested dataclasses and tuples allowed) as JSON-ready dict."""
  return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
  """Inverse of `config_to_dict`: lists become tuples, nested dataclasses are rebuilt.

  Raises ValueError naming unknown fields (a checkpoint from another code version).
  """
  return _from_jsonable(cls, data, cls.__name__)


def _from_jsonable(tp: Any, value: Any, where: str) -> Any:
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, Mapping):
      raise ValueError(f"{where}: expected an object for {tp.__name__}, got {value!r}")
    hints = typing.get_type_hints(tp)
    names = {f.name for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(set(value) - names)
    if unknown:
      raise ValueError(f"{where}: unknown fields {unknown} for {tp.__name__}")
    return tp(**{k: _from_jsonable(hints[k], v, f"{where}.{k}") for k, v in value.items()})
  origin = typing.get_origin(tp)
  if origin is tuple and isinstance(value, (list, tuple)):
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    return tuple(_from_jsonable(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
  if origin in (typing.Union, types.UnionType):
    for arg in typing.get_args(tp):
      if dataclasses.is_dataclass(arg) or typing.get_origin(arg) is tuple:
        try:
          return _from_jsonable(arg, value, where)
        except (ValueError, TypeError):
          continue
  return tuple(value) if isinstance(value, list) else value


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
  """Human-readable differences between two configs (dataclasses or JSON-like trees):
  ["a.b: checkpoint X, now Y", ...]."""
  if dataclasses.is_dataclass(saved) and not isinstance(saved, type):
    saved = config_to_dict(saved)
  if dataclasses.is_dataclass(current) and not isinstance(current, type):
    current = config_to_dict(current)
  if isinstance(saved, Mapping) and isinstance(current, Mapping):
    out = []
    for key in sorted(set(saved) | set(current), key=str):
      label = f"{prefix}.{key}" if prefix else str(key)
      if key not in saved:
        out.append(f"{label}: not in the checkpoint, now {current[key]!r}")
      elif key not in current:
        out.append(f"{label}: checkpoint {saved[key]!r}, not set now")
      else:
        out += config_differences(saved[key], current[key], label)
    return out
  if (isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple))
      and len(saved) == len(current)):
    out = []
    for i, (s, c) in enumerate(zip(saved, current)):
      out += config_differences(s, c, f"{prefix}[{i}]")
    return out
  return [] if saved == current else [f"{prefix}: checkpoint {saved!r}, now {current!r}"]
