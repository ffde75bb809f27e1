"""The training harness: `Trainer(config).train()` with progress, metrics, checkpoints, resume.

One chunk = one `learning.train_chunk` call on B streams x L tokens (`config.train`).
The loop:
  * streams packed documents (`data.PackedBatches`) through `train_chunk`; the host
    prepares the next batch while the device computes the current one;
  * shows a tqdm bar over tokens (current and average loss, tokens/s) when stderr is a
    terminal, and every `log_interval` chunks prints a line of brain statistics, calls
    `log_callback(step, loss, stats)`, appends to `RUN/metrics.jsonl` and writes
    TensorBoard events to `RUN/tensorboard/`;
  * saves `RUN/checkpoints/checkpoint_step_N` every `checkpoint_interval` chunks, at the
    end, and on SIGINT/SIGTERM (then returns; a second signal aborts at once);
  * counts chunks whose values went non-finite (`train_chunk` skipped their update): each
    is logged (a line and a `{"event": "nonfinite_skip"}` record in metrics.jsonl), no
    periodic checkpoint is written while such a streak lasts, and after
    `max_nonfinite_chunks` in a row the run rolls back to its last complete checkpoint
    (state, optimizer, RNG, data position) with the learning rate multiplied by
    `rollback_lr_factor` (an `{"event": "rollback"}` record). The lowered rate is in the
    optimizer state, so later checkpoints and resumes keep it. Without a checkpoint, or
    after `max_rollbacks` rollbacks with no new checkpoint between them, it stops with
    `TrainingDivergedError`.

Starting: with checkpoints in the run directory, `resume='auto'` asks "Load checkpoint?
(y/n)" when stdin is a terminal and loads otherwise; 'yes' loads (or fails), 'no' moves
the old run's files aside and starts afresh. Resume is exact: the state, the RNG key and
the data iterator come back bit for bit, so k chunks + resume to N == N chunks straight.
`init_from` starts from another run's weights with a fresh optimizer and fresh data.

A fresh run trains its tokenizer (sentencepiece, `config.data.vocab_size` pieces) on the
first `data.sample_chars` characters of the data, or loads `config.data.tokenizer`, and
sets the readout bias to the unigram log-probabilities of that sample.

Several processes (one per host, after `sharding.initialize_distributed`): the mesh
(`config.mesh`) spans every process's devices; each process packs only its own streams,
from its own shard of the documents (`data.num_shards`, default one per group of
processes holding the same streams), and saves that shard's data state in each
checkpoint; process 0 makes the tokenizer that all load, writes the checkpoint's shared
files, and alone logs. After every chunk the processes agree whether all have a next
batch, whether any got a signal and whether the chunk was finite on all, so they stop,
save, return, skip non-finite chunks and roll back together (each process restoring its
own shards' data state, as on resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec
from tensorboardX import SummaryWriter

from neurogen_jax import checkpoint, data, learning, readout, sharding
from neurogen_jax import tokenizer as tokenizer_lib
from neurogen_jax.checkpoint import CheckpointError
from neurogen_jax.config import BrainConfig, seed_phases, without_execution_fields
from neurogen_jax.corpus import DataSourceError
from neurogen_jax.plasticity import STAT_KEYS, PlasticityConfig

LogCallback = Callable[[int, float, dict[str, float]], None]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
RESUME_CHOICES = ("auto", "yes", "no")
MODES = ("local", "bptt")
DATA_LAYOUTS = ("packed", "contiguous")  # data.layout: see data.PackedBatches / ContiguousBatches
BYTES_TOKENIZER = "bytes"
_INIT_OPTIMIZER = learning.make_optimizer(1.0)


class ConfigError(ValueError):
  """A config value cannot work; the message names the field and what to set instead."""


class TrainingDivergedError(RuntimeError):
  """Training kept producing non-finite values and cannot roll back; the message says what
  happened and what to change."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """How a `Trainer.train()` call ended.

  stopped: 'max_chunks', 'end_of_data', or the signal's name ('SIGINT', 'SIGTERM').
  loss: mean cross entropy (nats/token) over this call's chunks (nan if none ran).
  checkpoint: the last checkpoint written or loaded (None if there is none).
  """

  step: int
  tokens: int
  loss: float
  stopped: str
  checkpoint: Path | None


# ---------------------------------------------------------------- configs from the dict


def resolve_implementation(implementation: str, config: ml_collections.ConfigDict) -> str:
  """config.brain.implementation "auto" -> "pallas" on a GPU unless the mesh splits the
  neurons (model > 1, where a Pallas call would gather every weight: docs/SHARDING.md),
  else "xla"; "xla" and "pallas" stay as they are."""
  if implementation not in ("auto", "xla", "pallas"):
    raise ConfigError(f"config.brain.implementation must be 'auto' (Pallas on a GPU, else XLA), "
                      f"'xla' or 'pallas', got {implementation!r}.")
  if implementation != "auto":
    return implementation
  model = int(config.mesh.model) if "mesh" in config else 1
  return "pallas" if jax.default_backend() == "gpu" and model == 1 else "xla"


def brain_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> BrainConfig:
  """The BrainConfig of `config.brain` (see experiments/configs/common.py);
  implementation "auto" is resolved here (`resolve_implementation`)."""
  values = dict(config.brain.to_dict())
  if "implementation" in values:
    values["implementation"] = resolve_implementation(values["implementation"], config)
  ticks = values.pop("phase_ticks", None)
  known = {f.name for f in dataclasses.fields(BrainConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"config.brain has fields BrainConfig does not know: {unknown}.")
  if ticks is not None:
    if len(ticks) != 5:
      raise ConfigError(f"config.brain.phase_ticks needs 5 tick counts (sensation, perception, "
                        f"integration, selection, action), got {tuple(ticks)}.")
    values["phases"] = seed_phases(tuple(int(t) for t in ticks),
                                   n_pathways=len(BrainConfig().pathways))
  for name, value in values.items():
    if isinstance(value, list):
      values[name] = tuple(value)
  try:
    return BrainConfig(vocab_size=vocab_size, **values)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.brain: {e}") from e


def signature_differences(saved: dict, current: dict) -> list[str]:
  """What differs between a checkpoint's resume signature and this run's, ignoring the
  brain's EXECUTION_FIELDS and filling fields newer than the checkpoint at their defaults."""
  def model_only(signature: dict) -> dict:
    out = dict(signature)
    if isinstance(out.get("brain_config"), dict):
      out["brain_config"] = without_execution_fields(out["brain_config"])
    return out
  return checkpoint.config_differences(model_only(with_new_config_fields(saved)),
                                       model_only(current))


def with_new_config_fields(signature: dict) -> dict:
  """A checkpoint's resume signature with the BrainConfig / PlasticityConfig fields added
  since it was written filled in at their defaults (a new field's default keeps the old
  behaviour), so that adding an option does not refuse older checkpoints."""
  out = dict(signature)
  for key, cls in (("brain_config", BrainConfig), ("plasticity_config", PlasticityConfig)):
    if isinstance(out.get(key), dict):
      defaults = json.loads(json.dumps(checkpoint.config_to_dict(cls())))
      out[key] = {**{k: v for k, v in defaults.items() if k not in out[key]}, **out[key]}
  return out


def plasticity_config_from(config: ml_collections.ConfigDict) -> PlasticityConfig:
  values = {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.plasticity.to_dict().items()}
  try:
    return PlasticityConfig(**values)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.plasticity: {e}") from e


def _check_config(config: ml_collections.ConfigDict) -> None:
  t = config.train
  if config.resume not in RESUME_CHOICES:
    raise ConfigError(f"resume must be one of {RESUME_CHOICES}, got {config.resume!r}.")
  if t.mode not in MODES:
    raise ConfigError(f"train.mode must be one of {MODES}, got {t.mode!r}.")
  for name in ("batch_size", "chunk_len", "log_interval", "checkpoint_interval"):
    if int(t[name]) < 1:
      raise ConfigError(f"train.{name} must be >= 1, got {t[name]} (chunk_len defaults to "
                        "tokens_per_chunk // batch_size).")
  for name in ("max_chunks", "keep_checkpoints", "gpu_device", "max_rollbacks", "lr_decay_chunks"):
    if int(t.get(name, 0)) < 0:
      raise ConfigError(f"train.{name} must be >= 0, got {t[name]}.")
  if int(t.max_nonfinite_chunks) < 1:
    raise ConfigError(f"train.max_nonfinite_chunks must be >= 1 (non-finite chunks in a row "
                      f"before rolling back), got {t.max_nonfinite_chunks}.")
  factor = float(t.rollback_lr_factor)
  if not 0 < factor <= 1:
    raise ConfigError(f"train.rollback_lr_factor must be in (0, 1] (the learning rate is "
                      f"multiplied by it on a rollback), got {t.rollback_lr_factor}.")
  if not config.run_dir:
    raise ConfigError("run_dir is empty; pass --run_dir=DIR.")
  if config.data.max_seq_length < 1:
    raise ConfigError(f"data.max_seq_length must be >= 1, got {config.data.max_seq_length}.")
  layout = config.data.get("layout", "packed")
  if layout not in DATA_LAYOUTS:
    raise ConfigError(f"data.layout must be 'packed' or 'contiguous', got {layout!r}.")


def enable_compilation_cache(directory: str | os.PathLike) -> None:
  """Keeps compiled XLA programs in `directory` so that later runs start in seconds.

  JAX_COMPILATION_CACHE_DIR, when set, wins.
  """
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.fspath(Path(directory).expanduser()))


# ------------------------------------------------------------------------------ trainer


class Trainer:
  """Trains a brain as `config` says (an ml_collections ConfigDict, see experiments/configs).

  Args:
    config: the run's config; `run_dir`, `resume` and `init_from` are in it.
    dataset: documents to train on instead of `config.data`: an iterable of strings (a
      list resumes exactly) or a grain IterDataset of strings.
    log_callback: called every `log_interval` chunks as `fn(step, loss, stats)` with the
      interval's mean loss (nats/token) and a flat dict of floats (see
      `_Interval.statistics`).

  Construction prepares everything (data, tokenizer, state, resume or init_from);
  `train()` runs the loop. `init_from` only counts when the run starts afresh: a
  fine-tuning run that was interrupted resumes from its own checkpoints.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               dataset: grain.IterDataset | Iterable[str] | None = None,
               log_callback: LogCallback | None = None):
    _check_config(config)
    self.config = config
    self.log_callback = log_callback
    self.run_dir = Path(config.run_dir).expanduser()
    self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR
    self.batch_size = int(config.train.batch_size)
    self.chunk_len = int(config.train.chunk_len)
    self.mode = config.train.mode
    self.device = _pick_device(int(config.train.gpu_device))
    self.mesh = _make_mesh(config)
    self._multiprocess = jax.process_count() > 1
    self._primary = sharding.is_primary()
    try:
      self._shards = sharding.data_shards(self.mesh, self.batch_size,
                                          int(config.data.get("num_shards", 0)))
    except ValueError as e:
      raise ConfigError(str(e)) from e
    self._step_fn = None
    self._gates_fn = None
    self.plasticity_config = plasticity_config_from(config)
    self.optimizer = learning.make_optimizer(config.train.learning_rate, config.train.grad_clip,
                                             config.train.weight_decay,
                                             int(config.train.get("lr_decay_chunks", 0)))
    self._dataset_kind = "config" if dataset is None else f"python:{type(dataset).__name__}"
    self._documents = data.as_documents(dataset) if dataset is not None else _documents(config.data)
    self._elapsed_s = 0.0
    self.last_checkpoint: Path | None = None
    self.rollbacks = 0  # rollbacks over the run's life (kept in checkpoints)
    self._nonfinite_in_a_row = 0
    self._rollbacks_since_save = 0

    resume_from = self._resume_choice()
    if self._primary:
      self.run_dir.mkdir(parents=True, exist_ok=True)
    sharding.barrier("trainer: run directory")
    with jax.default_device(self.device):
      if resume_from is not None:
        self._resume(resume_from)
      else:
        self._start()

  # ---- starting

  def _resume_choice(self) -> Path | None:
    latest = checkpoint.latest_checkpoint(self.checkpoint_dir)
    choice = self.config.resume
    if latest is None:
      if choice == "yes":
        raise ConfigError(f"resume='yes' but {self.checkpoint_dir} holds no checkpoint; use "
                          "--resume=auto or point --run_dir at the run to resume.")
      return None
    if choice == "no":
      return None
    if choice == "auto":
      # Several processes: process 0 asks (when on a terminal) and tells the others.
      ask = self._primary and sys.stdin is not None and sys.stdin.isatty()
      load = not ask or _ask_yes_no(f"Found {latest.path} (step {latest.step}). "
                                    "Load checkpoint? (y/n) ")
      if self._multiprocess:
        load = bool(sharding.broadcast_ints([load])[0])
      return latest.path if load else None
    return latest.path

  def _start(self) -> None:
    """A fresh run: tokenizer, initial state (or init_from's weights), data from the start.

    Several processes: process 0 moves an earlier run aside and makes the tokenizer
    (trains it, or loads it); the others load the one it saved, so all use the same.
    """
    _on_primary("moving the earlier run aside", self._archive_previous_run)
    init_from = checkpoint.find_checkpoint(self.config.init_from) if self.config.init_from else None
    sample = None
    if init_from is None:  # every process: the readout bias is computed from it
      sample = sample_texts(self._documents, int(self.config.data.sample_chars))
    _on_primary("making the tokenizer", lambda: self._make_tokenizer_from(init_from, sample).save(
        self.run_dir / TOKENIZER_DIR))
    self.tokenizer = tokenizer_lib.load_tokenizer(self.run_dir / TOKENIZER_DIR)
    self._check_same_tokenizer()
    self.brain_config = brain_config_from(self.config, self.tokenizer.vocab_size)
    self._rng, init_key = jax.random.split(jax.random.PRNGKey(int(self.config.seed)))
    # The optimizer's learning rate is a constant of its init: the (slow to compile) brain
    # initialiser is built with a fixed one, so that a new learning rate reuses the compiled
    # program, and the real optimizer state is made on its own.
    init = jax.jit(functools.partial(learning.init_train_state, self.brain_config,
                                     self.plasticity_config, _INIT_OPTIMIZER, batch=self.batch_size,
                                     mode=self.mode))
    ts = init(init_key)
    opt_state = jax.jit(self.optimizer.init)(learning.trainable(ts.params, self.mode))
    ts = ts._replace(opt_state=opt_state)
    if init_from is not None:
      ts = self._load_weights(ts, init_from)
    else:
      bias = readout.unigram_bias(self.tokenizer.encode("".join(sample)),
                                  self.brain_config.vocab_size)
      ts = ts._replace(params=ts.params._replace(b_out=jnp.asarray(bias)))
    self.train_state = self._place(ts)
    self.step = 0
    self.tokens = 0
    self._batches = iter(self._batch_dataset())

  def _make_tokenizer_from(self, init_from: Path | None, sample: list[str] | None):
    """The run's tokenizer: init_from's, the configured one, or one trained on `sample`."""
    if init_from is not None and (init_from / checkpoint.TOKENIZER_DIR).is_dir():
      return checkpoint.load_tokenizer(init_from)
    if init_from is not None:  # saved by NeuroGenModel, which works on token ids
      if not self.config.data.tokenizer:
        raise ConfigError(f"init_from={init_from} holds no tokenizer; set data.tokenizer to the "
                          f"one its token ids come from ('{BYTES_TOKENIZER}' or a path).")
      return self._make_tokenizer([])
    return self._make_tokenizer(sample)

  def _check_same_tokenizer(self) -> None:
    """Several processes: fails unless all encode a probe text to the same ids."""
    if not self._multiprocess:
      return
    probe = self.tokenizer.encode("The tokenizer of every process: é, 漢字, \n\t 0123.")
    digest = [self.tokenizer.vocab_size, zlib.crc32(np.asarray(probe, np.int64).tobytes())]
    rows = sharding.allgather_ints(digest).tolist()
    if len({tuple(row) for row in rows}) > 1:
      raise ConfigError(f"the processes do not share one tokenizer (vocabulary, crc of a probe "
                        f"text: {rows}); is "
                        f"{self.run_dir / TOKENIZER_DIR} on a file system all hosts share?")

  def _make_tokenizer(self, sample: list[str]):
    spec = self.config.data.tokenizer
    if spec == BYTES_TOKENIZER:
      return tokenizer_lib.ByteTokenizer()
    if spec:
      try:
        return tokenizer_lib.load_tokenizer(spec)
      except (OSError, RuntimeError) as e:
        raise ConfigError(f"data.tokenizer={spec!r}: cannot load it ({e}). Give a tokenizer.model "
                          f"file or a directory holding one, '{BYTES_TOKENIZER}', or '' to train "
                          "one.") from e
    prefix = self.run_dir / TOKENIZER_DIR / Path(tokenizer_lib.MODEL_FILENAME).stem
    try:
      return tokenizer_lib.train_tokenizer(sample, int(self.config.data.vocab_size), prefix,
                                           sample_chars=int(self.config.data.sample_chars))
    except ValueError as e:
      raise ConfigError(f"data.vocab_size: {e}") from e

  def _load_weights(self, ts: learning.TrainState, source: Path) -> learning.TrainState:
    """init_from: the source's parameters and homeostatic thresholds; the rest stays fresh."""
    loaded = checkpoint.load_brain(source, device=self.device)
    changed = checkpoint.config_differences(
        without_execution_fields(loaded.metadata["brain_config"]),
        without_execution_fields(checkpoint.config_to_dict(self.brain_config)))
    if changed:
      _say(f"init_from {source}: brain settings differ from the checkpoint's (weights are "
           f"reused as they are): {'; '.join(changed)}")
    if jax.tree.structure(loaded.params) != jax.tree.structure(ts.params) or any(
        a.shape != b.shape or a.dtype != b.dtype
        for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(ts.params))):
      raise CheckpointError(f"{source}: its weights do not fit this config's brain: "
                            f"{'; '.join(changed)}. Use the checkpoint's brain settings (see "
                            f"{source / checkpoint.METADATA_FILE}).")
    state = ts.brain_state._replace(theta_N=loaded.brain_state.theta_N,
                                    rate_N=loaded.brain_state.rate_N)
    _say(f"Fine-tuning from {source} (step {loaded.metadata['step']}): weights loaded, fresh "
         f"optimizer (learning rate {self.config.train.learning_rate}) and data.")
    return ts._replace(params=loaded.params, brain_state=state)

  def _resume(self, path: Path) -> None:
    meta = checkpoint.read_metadata(path)
    self.tokenizer = checkpoint.load_tokenizer(path)
    self.brain_config = brain_config_from(self.config, self.tokenizer.vocab_size)
    changed = signature_differences(meta.get("signature", {}), self._signature())
    if changed:
      raise CheckpointError(
          f"{path / checkpoint.METADATA_FILE}: the checkpoint does not match this run's "
          f"config: {'; '.join(changed)}. Resume with the checkpoint's settings, start afresh "
          "with --resume=no (or another --run_dir), or fine-tune from it with --init_from.")
    ts = self._restore(path, meta)
    saved_lr = meta["config"]["train"]["learning_rate"]
    if saved_lr != self.config.train.learning_rate:
      ts = _with_learning_rate(ts, self.config.train.learning_rate)
      _say(f"Learning rate changed on resume: {saved_lr} -> {self.config.train.learning_rate}.")
    self.train_state = self._place(ts)
    self._elapsed_s = float(meta.get("elapsed_s", 0.0))
    self.rollbacks = int(meta.get("rollbacks", 0))
    if self._primary:
      self._truncate_metrics(self.step)
    _say(f"Resumed from {path} (step {self.step}, {self.tokens:,} tokens).")

  def _restore(self, path: Path, meta: dict) -> learning.TrainState:
    """Reads checkpoint `path`: sets the RNG, step, tokens, data iterator and
    `last_checkpoint`; returns its train state (not yet placed on the device).

    Several processes: all call it; each restores the data state of its own shards."""
    if self.mesh is None:
      abstract = checkpoint.abstract_train_state(self.brain_config, self.plasticity_config,
                                                 self.optimizer, self.batch_size, self.mode)
    else:  # restore straight onto the mesh (any device count the checkpoint was saved on)
      abstract = sharding.abstract_train_state(self.brain_config, self.plasticity_config,
                                               self.optimizer, self.batch_size, self.mesh, self.mode)
    ts, self._rng = checkpoint.restore(path, abstract, device=self.device)
    self.step = int(meta["step"])
    self.tokens = int(meta["tokens"])
    self._batches = iter(self._batch_dataset())
    if self._shards.count > 1:
      data_state = checkpoint.read_data_shards(path, self._shards.local, self._shards.count)
    else:
      data_state = checkpoint.read_data_state(path)
    if data_state is not None:
      try:
        self._batches.set_state(data_state)
      except (KeyError, TypeError, ValueError) as e:
        where = (path / checkpoint.DATA_STATE_FILE if self._shards.count == 1 else
                 f"{path} (data shards {list(self._shards.local)} of {self._shards.count})")
        raise CheckpointError(f"{where}: its data state does not fit this data pipeline "
                              f"({e}).") from e
    self.last_checkpoint = path
    return ts

  @property
  def learning_rate(self) -> float:
    """The learning rate in effect (the config's, unless rollbacks lowered it)."""
    lr = optax.tree_utils.tree_get(self.train_state.opt_state, "learning_rate")
    if isinstance(lr, jax.Array) and not lr.is_fully_addressable:  # replicated on a mesh
      lr = lr.addressable_data(0)
    return float(lr)

  def _roll_back(self, metrics_file) -> None:
    """Restores the newest loadable checkpoint and lowers the learning rate.

    Several processes: all call it together (the non-finite flag is agreed after every
    chunk); they try process 0's list of checkpoints, newest first, and take the first that
    every process restored (each its own data shards, as on resume).

    Raises:
      TrainingDivergedError: there is no checkpoint, or `max_rollbacks` rollbacks came
        without a new checkpoint between them.
    """
    t = self.config.train
    streak = (f"{self._nonfinite_in_a_row} chunks in a row (steps "
              f"{self.step - self._nonfinite_in_a_row + 1}..{self.step}) produced non-finite "
              "values (NaN/Inf) and their updates were skipped")
    advice = (f"Lower train.learning_rate (now {self.learning_rate:g}), check the data and "
              "the brain/plasticity settings, or raise train.max_nonfinite_chunks.")
    candidates = self._rollback_candidates()
    if not candidates:
      raise TrainingDivergedError(
          f"{streak}, and {self.checkpoint_dir} holds no checkpoint to roll back to (the first "
          f"is written after train.checkpoint_interval={t.checkpoint_interval} chunks). "
          f"{advice}")
    if self._rollbacks_since_save >= int(t.max_rollbacks):
      raise TrainingDivergedError(
          f"{streak}, after {self._rollbacks_since_save} rollbacks to {candidates[0].path} "
          f"without reaching a new checkpoint (train.max_rollbacks={t.max_rollbacks}). "
          f"{advice}")
    old_lr, from_step = self.learning_rate, self.step
    new_lr = old_lr * float(t.rollback_lr_factor)
    for i, candidate in enumerate(candidates):
      error = None
      try:
        ts = self._restore(candidate.path, checkpoint.read_metadata(candidate.path))
      except CheckpointError as e:
        error = e
      if (self._multiprocess and not sharding.allgather_ints([error is None]).all()
          and error is None):
        error = CheckpointError(f"{candidate.path}: another process could not restore it (its "
                                "log says why).")
      if error is None:
        break
      if i == len(candidates) - 1:
        raise TrainingDivergedError(f"{streak}; no checkpoint could be restored, the last "
                                    f"failure: {error}") from error
      _say(f"Cannot roll back to {candidate.path} ({error}); trying an older checkpoint.")
    self.train_state = self._place(_with_learning_rate(ts, new_lr))
    self.rollbacks += 1
    self._rollbacks_since_save += 1
    self._nonfinite_in_a_row = 0
    if self._primary:
      self._truncate_metrics(self.step, keep_events=True)
      record = {"step": self.step, "tokens": self.tokens, "event": "rollback",
                "from_step": from_step, "checkpoint": str(self.last_checkpoint),
                "learning_rate": new_lr, "previous_learning_rate": old_lr,
                "rollbacks": self.rollbacks}
      metrics_file.write(json.dumps(record) + "\n")
      metrics_file.flush()
    _say(f"Rolled back to {self.last_checkpoint} (step {self.step}) after {streak}; "
         f"learning rate {old_lr:g} -> {new_lr:g} (rollback {self.rollbacks}).")

  def _rollback_candidates(self) -> list[checkpoint.CheckpointInfo]:
    """The checkpoints to roll back to, newest first; several processes: process 0's list."""
    candidates = checkpoint.list_checkpoints(self.checkpoint_dir)[::-1]
    if not self._multiprocess:
      return candidates
    count = int(sharding.broadcast_ints([len(candidates)])[0])
    if not count:
      return []
    steps = sharding.broadcast_ints([c.step for c in candidates] if self._primary else [0] * count)
    return [checkpoint.CheckpointInfo(checkpoint.checkpoint_path(self.checkpoint_dir, s), int(s))
            for s in steps.tolist()]

  def _note_nonfinite(self, loss: float, metrics_file) -> None:
    """Logs a chunk whose update `train_chunk` skipped (line + metrics record)."""
    limit = int(self.config.train.max_nonfinite_chunks)
    if metrics_file is not None:  # (process 0's)
      record = {"step": self.step, "tokens": self.tokens, "event": "nonfinite_skip",
                "loss": loss if math.isfinite(loss) else None,
                "in_a_row": self._nonfinite_in_a_row, "max_in_a_row": limit}
      metrics_file.write(json.dumps(record) + "\n")
      metrics_file.flush()
    _say(f"step {self.step}: non-finite values (loss {loss}); update skipped "
         f"({self._nonfinite_in_a_row} of {limit} in a row before rolling back to the last "
         "checkpoint).")

  def _batch_dataset(self) -> data.PackedBatches | data.PackedShards | data.ContiguousBatches:
    """This process's batches: all B streams, or the B/S streams of each of its data shards.

    data.layout 'contiguous' (one shard, finite data): each stream reads its own contiguous
    1/B of the whole corpus (`data.ContiguousBatches`, experiments.learn's layout); 'packed'
    (default): documents dealt in segments to the streams (`data.PackedBatches`)."""
    segment_tokens = int(self.config.data.max_seq_length)
    if self.config.data.get("layout", "packed") == "contiguous":  # (checked by _check_config)
      if self._shards.count != 1 or not int(self.config.data.num_epochs):
        raise ConfigError("data.layout='contiguous' needs one data shard and a finite corpus "
                          "(data.num_epochs >= 1).")
      return data.ContiguousBatches(self._documents, self.tokenizer, batch_size=self.batch_size,
                                    seq_len=self.chunk_len)
    if self._shards.count == 1:
      return data.PackedBatches(self._documents, self.tokenizer, batch_size=self.batch_size,
                                seq_len=self.chunk_len, segment_tokens=segment_tokens)
    shards = {s: data.shard_documents(self._documents, s, self._shards.count)
              for s in self._shards.local}
    return data.PackedShards(shards, self.tokenizer, batch_size=self.batch_size // self._shards.count,
                             seq_len=self.chunk_len, segment_tokens=segment_tokens)

  def _signature(self) -> dict:
    """What must not change between a checkpoint and its resumption (JSON-normalised)."""
    d = self.config.data
    source = {"kind": self._dataset_kind, "max_seq_length": d.max_seq_length}
    if d.get("layout", "packed") != "packed":  # (absent when packed: older checkpoints match)
      source["layout"] = d.layout
    if self._dataset_kind == "config":
      source.update(files=d.files, dataset_name=d.dataset_name, split=d.split,
                    num_epochs=d.num_epochs)
    if self._shards.count > 1:  # (absent when 1: checkpoints from before shards still match)
      source["num_shards"] = self._shards.count
    signature = {"brain_config": checkpoint.config_to_dict(self.brain_config),
                 "plasticity_config": checkpoint.config_to_dict(self.plasticity_config),
                 "mode": self.mode, "batch_size": self.batch_size, "chunk_len": self.chunk_len,
                 "data": source, "vocab_size": self.tokenizer.vocab_size}
    decay = int(self.config.train.get("lr_decay_chunks", 0))
    if decay:  # its optimizer state has the schedule's count (absent when 0: older checkpoints match)
      signature["lr_decay_chunks"] = decay
    return json.loads(json.dumps(signature))

  def _archive_previous_run(self) -> None:
    """Moves an earlier run's checkpoints and logs in `run_dir` aside (nothing is deleted)."""
    names = (CHECKPOINT_DIR, METRICS_FILE, TENSORBOARD_DIR, TOKENIZER_DIR)
    present = [n for n in names if (self.run_dir / n).exists()]
    if not present:
      return
    archive = self.run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    archive.mkdir(exist_ok=True)
    for name in present:
      os.replace(self.run_dir / name, archive / name)
    _say(f"Starting afresh: the earlier run's {', '.join(present)} moved to {archive}.")

  def _truncate_metrics(self, step: int, keep_events: bool = False) -> None:
    """Drops metrics logged after `step` (by the run that was interrupted after it); with
    `keep_events`, skip and rollback records stay (a rollback keeps its history)."""
    path = self.run_dir / METRICS_FILE
    if not path.is_file():
      return
    keep = []
    for line in path.read_text().splitlines():
      if not line.strip():
        continue
      record = json.loads(line)
      if record.get("step", 0) <= step or (keep_events and "event" in record):
        keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))

  # ---- the loop

  def _place(self, ts: learning.TrainState) -> learning.TrainState:
    """Commits the state to the device, or lays it out on the mesh."""
    if self.mesh is None:
      # Committed like restored arrays: a fresh, a fine-tuned and a resumed run then share
      # one compiled train_chunk (committed-ness is part of jit's cache key).
      return jax.device_put(ts, self.device)
    return sharding.shard_train_state(ts, self.mesh)

  def _train_chunk(self, batch) -> tuple[learning.TrainState, learning.ChunkMetrics]:
    """One `learning.train_chunk` on the device, or its sharded form on the mesh."""
    if self.mesh is None:
      return learning.train_chunk(
          self.train_state, jnp.asarray(batch.inputs_BxL), jnp.asarray(batch.targets_BxL),
          config=self.brain_config, pcfg=self.plasticity_config, optimizer=self.optimizer,
          mode=self.mode)
    if self._step_fn is None:
      self._step_fn = sharding.sharded_train_chunk(
          self.mesh, self.train_state, config=self.brain_config, pcfg=self.plasticity_config,
          optimizer=self.optimizer, mode=self.mode)
    return self._step_fn(self.train_state, sharding.shard_batch(batch.inputs_BxL, self.mesh),
                         sharding.shard_batch(batch.targets_BxL, self.mesh))

  def train(self) -> TrainResult:
    """Trains until `max_chunks`, the end of the data, or SIGINT/SIGTERM; saves at the end.

    Several processes run the same loop in step: after every chunk they agree (one small
    all-gather) whether all have a next batch, whether any got a signal and whether the
    chunk was finite everywhere, so all stop, save, return and roll back together. Only process 0 logs, shows progress and writes metrics.
    """
    t = self.config.train
    max_chunks = int(t.max_chunks)
    interrupt = _Interrupt()
    tokens_per_chunk = self.batch_size * self.chunk_len
    bar = tqdm.tqdm(total=max_chunks * tokens_per_chunk or None, initial=self.tokens, unit="tok",
                    unit_scale=True, dynamic_ncols=True,
                    disable=not (self._primary and sys.stderr.isatty()))
    run_loss, run_tokens = 0.0, 0
    interval = _Interval()
    stopped = "max_chunks"
    saved_step = self.step if self.last_checkpoint is not None else None
    agreed_signal = None  # several processes: a signal any of them got, as agreed after a chunk
    with contextlib.ExitStack() as stack:
      writer = metrics_file = None
      if self._primary:
        writer = stack.enter_context(contextlib.closing(SummaryWriter(
            os.fspath(self.run_dir / TENSORBOARD_DIR), purge_step=self.step + 1 if self.step else None)))
        metrics_file = stack.enter_context(open(self.run_dir / METRICS_FILE, "a"))
      stack.callback(bar.close)
      stack.enter_context(_handle_signals(interrupt))
      stack.enter_context(jax.default_device(self.device))
      batch = None if max_chunks and self.step >= max_chunks else next(self._batches, None)
      if self._multiprocess:
        batch, _, agreed_signal, _ = self._agree(batch, 0, interrupt, True)
      if batch is None and not (max_chunks and self.step >= max_chunks):
        stopped = "end_of_data"
      start = time.perf_counter()
      while batch is not None:
        ts, metrics = self._train_chunk(batch)
        self.train_state = ts
        # Host work while the device computes: the data state after this batch (only
        # when a checkpoint may follow: it costs ~B x segment tokens of packing), the bytes
        # of its text, the next batch.
        last = bool(max_chunks) and self.step + 1 >= max_chunks
        stop_signal = agreed_signal if self._multiprocess else interrupt.signal_name
        may_save = last or stop_signal or (self.step + 1) % t.checkpoint_interval == 0
        data_state = self._batches.get_state() if may_save else None
        n_bytes = _utf8_bytes(self.tokenizer, batch.targets_BxL)
        batch = None if last else next(self._batches, None)
        metrics = jax.device_get(metrics)
        finite = bool(metrics.finite)
        if self._multiprocess:  # (a process whose data goes on saves its state one batch on)
          batch, n_bytes, agreed_signal, finite = self._agree(batch, n_bytes, interrupt, finite)
        if batch is None and data_state is None:  # the data ended: nothing more to resume
          data_state = self._batches.get_state()
        self.step += 1
        self.tokens += tokens_per_chunk
        now = time.perf_counter()
        self._elapsed_s += now - start
        start = now
        loss = float(metrics.loss)
        bar.update(tokens_per_chunk)
        if not finite:  # train_chunk skipped the update (several processes: on any of them)
          self._nonfinite_in_a_row += 1
          self._note_nonfinite(loss, metrics_file)
          if self._nonfinite_in_a_row >= int(t.max_nonfinite_chunks):
            self._roll_back(metrics_file)
            saved_step, interval = self.step, _Interval()
            bar.n = self.tokens
            batch = next(self._batches, None)
            if self._multiprocess:  # as before the first chunk
              batch, _, agreed_signal, _ = self._agree(batch, 0, interrupt, True)
            stopped = "max_chunks" if batch is not None else "end_of_data"
            start = time.perf_counter()
            continue
        else:
          self._nonfinite_in_a_row = 0
          run_loss, run_tokens = run_loss + loss * tokens_per_chunk, run_tokens + tokens_per_chunk
          interval.add(metrics, tokens_per_chunk, n_bytes)
          bar.set_postfix({"loss": f"{loss:.3f}", "avg": f"{run_loss / run_tokens:.3f}"},
                          refresh=False)
        if self.step % t.log_interval == 0 and interval.chunks:
          self._log(interval, run_loss / run_tokens, writer, metrics_file)
          interval = _Interval()
        if batch is None and not last:
          stopped = "end_of_data"
        # Several processes: the signal as agreed (the same everywhere); one alone: as it is.
        stop_signal = stop_signal if self._multiprocess else interrupt.signal_name
        # No periodic checkpoint inside a streak of skipped chunks (a rollback then goes
        # to the state before it); the last one and a signal's are written all the same.
        if data_state is not None and self._nonfinite_in_a_row and not (
            last or batch is None or stop_signal):
          data_state = None
        # A signal that came after `may_save` was decided is served after the next chunk.
        if data_state is not None:
          self.save_checkpoint(data_state, loss)
          saved_step = self.step
          if stop_signal:
            stopped = stop_signal
            break
      if saved_step != self.step:  # nothing ran, or the data ended at a chunk boundary
        self.save_checkpoint(self._batches.get_state(), float("nan"))
    mean_loss = run_loss / run_tokens if run_tokens else float("nan")
    if stopped.startswith("SIG"):
      _say(f"{stopped}: stopped at step {self.step}; checkpoint {self.last_checkpoint}. Run the "
           "same command again to resume.")
    return TrainResult(step=self.step, tokens=self.tokens, loss=mean_loss, stopped=stopped,
                       checkpoint=self.last_checkpoint)

  def _agree(self, batch: data.Batch | None, n_bytes: int, interrupt: _Interrupt, finite: bool
             ) -> tuple[data.Batch | None, int, str | None, bool]:
    """Several processes: (the next batch if every process has one, else None; the bytes of
    the chunk's text over all streams; the name of a signal any process got, else None;
    whether the chunk was finite on every process, so that all count a non-finite chunk
    and roll back together)."""
    mine = [batch is not None, n_bytes if self._shards.writer else 0, interrupt.signum or 0,
            bool(finite)]
    rows = sharding.allgather_ints(mine)
    signals = [int(s) for s in rows[:, 2] if s]
    return (batch if rows[:, 0].all() else None, int(rows[:, 1].sum()),
            signal.Signals(signals[0]).name if signals else None, bool(rows[:, 3].all()))

  def save_checkpoint(self, data_state: dict | None = None, loss: float = float("nan")) -> Path:
    """Writes `checkpoint_step_{step}` (data state: the iterator's, unless given).

    Several processes: all call it; each saves the data state of its own shards.
    """
    if data_state is None:
      data_state = self._batches.get_state()
    metadata = {
        "tokens": self.tokens, "loss": loss if math.isfinite(loss) else None,
        "learning_rate": self.learning_rate, "rollbacks": self.rollbacks,
        "elapsed_s": self._elapsed_s, "config": self.config.to_dict(),
        "signature": self._signature(), "mode": self.mode, "chunk_len": self.chunk_len,
        "tokenizer": {"kind": type(self.tokenizer).__name__,
                      "vocab_size": self.tokenizer.vocab_size},
        "processes": jax.process_count(),
    }
    shards = {}
    if self._shards.count > 1:
      shards = {int(s): state for s, state in data_state.items()} if self._shards.writer else {}
      data_state = None
    rng = self._rng if self.mesh is None else sharding.replicate(self._rng, self.mesh)
    info = checkpoint.save(self.checkpoint_dir, self.train_state, rng=rng,
                           data_state=data_state, tokenizer=self.tokenizer,
                           brain_config=self.brain_config, metadata=metadata,
                           keep=int(self.config.train.keep_checkpoints), data_shards=shards,
                           num_data_shards=self._shards.count)
    self.last_checkpoint = info.path
    self._rollbacks_since_save = 0
    return info.path

  def _gate_means(self) -> tuple[float, float]:
    """Mean thalamic and basal-ganglia gates over all streams (every process calls it)."""
    bs = self.train_state.brain_state
    if self.mesh is None:
      thal_B, bg_B = jax.device_get((bs.thal_gate_B, bs.bg_gate_B))
      return float(np.mean(thal_B)), float(np.mean(bg_B))
    if self._gates_fn is None:  # the gates are split over 'data': reduce them on the mesh
      self._gates_fn = jax.jit(lambda a, b: jnp.stack([jnp.mean(a), jnp.mean(b)]),
                               out_shardings=NamedSharding(self.mesh, PartitionSpec()))
    thal, bg = np.asarray(self._gates_fn(bs.thal_gate_B, bs.bg_gate_B)).tolist()
    return thal, bg

  def _log(self, interval: _Interval, avg_loss: float, writer: SummaryWriter | None,
           metrics_file) -> None:
    stats = interval.statistics(self.brain_config.area_names)
    stats.update(loss_avg=avg_loss, tokens=float(self.tokens),
                 learning_rate=self.learning_rate)
    stats["gate/thalamus"], stats["gate/basal_ganglia"] = self._gate_means()
    if not self._primary:
      return
    read_stats = getattr(self._batches, "stats", None)
    if read_stats is not None:  # documents read so far (the reader runs a little ahead)
      stats.update({f"data/{k}": float(v) for k, v in dataclasses.asdict(read_stats).items()})
    record = {"step": self.step, "elapsed_s": round(self._elapsed_s, 3), **stats}
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    for key, value in stats.items():
      writer.add_scalar(key, value, self.step)
    writer.flush()
    rates = " ".join(f"{a[:4]} {stats[f'rate/{a}']:.2%}" for a in self.brain_config.area_names)
    _say(f"step {self.step} | {self.tokens:,} tok | loss {stats['loss']:.4f} "
         f"(avg {avg_loss:.4f}) | {stats['bits_per_byte']:.3f} bits/byte | "
         f"acc {stats['accuracy']:.3f} | {stats['tokens_per_s']:,.0f} tok/s | rates {rates} | "
         f"dopamine {stats['plasticity/dopamine']:+.4f}" + _data_note(stats))
    if self.log_callback is not None:
      self.log_callback(self.step, stats["loss"], stats)


# ----------------------------------------------------------------------------- helpers


class _Interval:
  """Sums over the chunks since the last log line."""

  def __init__(self):
    self.chunks = 0
    self.tokens = 0
    self.nats = 0.0
    self.correct = 0.0
    self.bytes = 0
    self.rates_A = 0.0
    self.plastic: dict[str, float] = {}
    self.start = time.perf_counter()

  def add(self, metrics: learning.ChunkMetrics, tokens: int, n_bytes: int) -> None:
    self.chunks += 1
    self.tokens += tokens
    self.nats += float(np.sum(metrics.loss_BxL, dtype=np.float64))
    self.correct += float(np.sum(metrics.correct_BxL, dtype=np.float64))
    self.bytes += n_bytes
    self.rates_A = self.rates_A + np.asarray(metrics.rates_A, np.float64)
    for key, value in metrics.plastic.items():
      self.plastic[key] = self.plastic.get(key, 0.0) + float(value)

  def statistics(self, area_names: tuple[str, ...]) -> dict[str, float]:
    """Flat dict: loss (nats/token), bits_per_byte, accuracy, tokens_per_s, rate/<area>
    (spikes per neuron per tick), plasticity/<stat> (see plasticity.STAT_KEYS). `Trainer._log`
    adds loss_avg, tokens, learning_rate, gate/<area> and data/<ReadStats field>."""
    n = max(self.chunks, 1)
    stats = {
        "loss": self.nats / max(self.tokens, 1),
        "bits_per_byte": self.nats / math.log(2) / max(self.bytes, 1),
        "accuracy": self.correct / max(self.tokens, 1),
        "tokens_per_s": self.tokens / max(time.perf_counter() - self.start, 1e-9),
    }
    rates_A = np.atleast_1d(self.rates_A)
    stats.update({f"rate/{a}": float(r) / n for a, r in zip(area_names, rates_A)})
    stats.update({f"plasticity/{k}": self.plastic.get(k, 0.0) / n for k in STAT_KEYS})
    return stats


def _data_note(stats: dict[str, float]) -> str:
  """' | data: ...' when documents were skipped or repaired so far, else ''."""
  empty, replaced = stats.get("data/empty_skipped", 0), stats.get("data/replacement_chars", 0)
  if not (empty or replaced):
    return ""
  return (f" | data: {int(stats['data/documents']):,} documents, {int(empty):,} empty skipped, "
          f"{int(replaced):,} invalid UTF-8 sequences replaced by U+FFFD")


def _with_learning_rate(ts: learning.TrainState, learning_rate: float) -> learning.TrainState:
  """`ts` with the optimizer's (injected) learning rate set to `learning_rate`."""
  return ts._replace(opt_state=optax.tree_utils.tree_set(
      ts.opt_state, learning_rate=jnp.asarray(learning_rate, jnp.float32)))


def _utf8_bytes(tokenizer, tokens_BxL: np.ndarray) -> int:
  """UTF-8 bytes of the text the rows stand for (eos contributes none)."""
  return sum(len(tokenizer.decode(row.tolist()).encode("utf-8")) for row in tokens_BxL)


def _documents(data_cfg: ml_collections.ConfigDict) -> grain.IterDataset:
  hub = not data_cfg.files and data_cfg.dataset_name != "shakespeare"
  if hub and not data_cfg.streaming:
    raise ConfigError(f"data.streaming=False: downloading {data_cfg.dataset_name!r} whole is not "
                      "supported. Keep streaming=True, or download files and pass "
                      f"{data.LOCAL_FILES_HINT}.")
  num_epochs = int(data_cfg.num_epochs) or None
  return data.make_documents(data_cfg, num_epochs=num_epochs)


def sample_texts(documents: grain.IterDataset, max_chars: int) -> list[str]:
  """The first `max_chars` characters of the documents (a separate iterator): the
  tokenizer's training sample."""
  texts, total = [], 0
  for text in documents:
    texts.append(text[:max_chars - total])
    total += len(texts[-1])
    if total >= max_chars:
      break
  if not texts:
    raise DataSourceError("The training data holds no documents (all empty?); check data.files "
                          "or the dataset.")
  return texts


def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh | None:
  """The run's ('data', 'model') mesh; None for the plain one-device path (a 1 x 1 mesh).

  Several processes need a mesh over all their devices (data x model = every device).
  """
  mesh_cfg = config.get("mesh", None)
  data_axis, model_axis = (int(mesh_cfg.data), int(mesh_cfg.model)) if mesh_cfg else (1, 1)
  processes, devices = jax.process_count(), jax.device_count()
  if processes > 1 and data_axis * model_axis != devices:
    raise ConfigError(
        f"{processes} processes hold {devices} devices, and the mesh (mesh.data={data_axis} x "
        f"mesh.model={model_axis}) must use all of them: set --config.mesh.data={devices} "
        f"(data parallel; train.batch_size a multiple of {devices}), or data x model = {devices}.")
  try:
    return (sharding.make_mesh(data_axis, model_axis) if data_axis * model_axis > 1 else None)
  except ValueError as e:
    raise ConfigError(f"config.mesh: {e}") from e


def _on_primary(what: str, fn: Callable[[], object]) -> None:
  """Runs `fn` on process 0 alone; every process returns once it is done.

  The other processes wait for it, and fail (instead of hanging) when it failed.
  """
  error = None
  if sharding.is_primary():
    try:
      fn()
    except BaseException as e:  # pylint: disable=broad-except  # re-raised below
      error = e
  if jax.process_count() > 1 and not sharding.broadcast_ints([error is None])[0] and error is None:
    raise ConfigError(f"process 0 failed while {what}; its log says why.")
  if error is not None:
    raise error


def _pick_device(index: int) -> jax.Device:
  """This process's device for unsharded arrays: local GPU `index`, else the first one."""
  gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
  if not gpus:
    if index:
      _say(f"train.gpu_device={index} ignored: no GPU, running on {jax.local_devices()[0]}.")
    return jax.local_devices()[0]
  if index >= len(gpus):
    raise ConfigError(f"train.gpu_device={index}, but there are {len(gpus)} GPUs "
                      f"(0..{len(gpus) - 1}).")
  return gpus[index]


def _ask_yes_no(question: str) -> bool:
  while True:
    try:
      answer = input(question).strip().lower()
    except EOFError:
      raise ConfigError("No answer to 'Load checkpoint?'; pass --resume=yes or --resume=no."
                        ) from None
    if answer in ("y", "yes"):
      return True
    if answer in ("n", "no"):
      return False


class _Interrupt:
  """Signal handler: the first SIGINT/SIGTERM asks the loop to save and stop; a second aborts."""

  def __init__(self):
    self.signal_name: str | None = None
    self.signum: int | None = None

  def __call__(self, signum, frame):
    del frame
    if self.signal_name is not None:
      raise KeyboardInterrupt
    self.signum = int(signum)
    self.signal_name = signal.Signals(signum).name
    _say(f"{self.signal_name}: saving a checkpoint after this chunk, then stopping "
         "(send it again to abort without saving).")


@contextlib.contextmanager
def _handle_signals(handler: _Interrupt) -> Iterator[None]:
  if threading.current_thread() is not threading.main_thread():
    yield  # signal handlers can only be set from the main thread
    return
  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _say(message: str) -> None:
  """A line on stderr (process 0's only, when there are several)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stderr)
