"""The schema every config shares; `default`, `tiny` and `slimpajama` change a few values.

Sections (read by `neurogen_jax.train.Trainer`):
  seed, run_dir, resume ('auto'|'yes'|'no'), init_from (checkpoint or run to fine-tune from)
  brain:      every BrainConfig field that a command line can set (`vocab_size` comes from
              the tokenizer), plus `phase_ticks`, the ticks of the five phases;
              implementation 'auto' (the default here) = the Pallas kernels on a GPU
              (unless mesh.model > 1), else XLA; the execution fields (implementation,
              tick_unroll, events_variant, fuse_propagation, propagation_backend,
              synapse_backend) may change on resume
  plasticity: every PlasticityConfig field (switches and rates of the local rules)
  data:       files (local .txt/.jsonl/.jsonl.zst/.parquet: glob, comma list or directory;
              empty = `dataset_name`), dataset_name ('shakespeare' = the default corpus,
              else a Hugging Face dataset), split, streaming, tokenizer ('' = train a
              sentencepiece BPE of `vocab_size` on `sample_chars` characters of the data,
              'bytes' = ByteTokenizer, else the path of a saved tokenizer), vocab_size,
              sample_chars (also the sample of the unigram readout bias), max_seq_length
              (documents reach the streams in segments of at most this many tokens, each
              followed by eos), num_epochs (passes over local files, 0 = endless), layout
              ('packed': documents dealt to the streams in segments, a few documents at a
              time; 'contiguous': a finite corpus read whole and cut into B contiguous
              pieces, one per stream, as experiments.learn does),
              num_shards (0 = one per host: each host reads its own shard of the documents
              into its own streams; S > 0 splits the stream into S shards feeding B/S
              streams each, so one host with S = 2 sees the batches of a 2-host run)
  train:      mode ('local' rules or the 'bptt' control), batch_size (B streams),
              tokens_per_chunk, chunk_len (L tokens per stream per chunk; by default
              tokens_per_chunk // batch_size), max_chunks (0 = until the data ends),
              learning_rate, lr_decay_chunks (> 0: a cosine decay of the rate to 0
              over that many chunks, on top of learning_rate; 0 = constant), grad_clip,
              weight_decay, log_interval and
              checkpoint_interval (in chunks), keep_checkpoints, gpu_device;
              max_nonfinite_chunks (chunks in a row whose update was skipped for NaN/Inf
              before rolling back to the last checkpoint), rollback_lr_factor (the
              learning rate is multiplied by it on each rollback), max_rollbacks
              (rollbacks without a new checkpoint between them before the run stops)

A chunk is one `learning.train_chunk` call: B streams x L tokens, one optimizer update.
"""

from __future__ import annotations

import dataclasses
import inspect

import ml_collections

from neurogen_jax.config import AREA_NAMES, BrainConfig, seed_phases
from neurogen_jax.plasticity import PlasticityConfig

# BrainConfig fields that are not plain settings: the area/pathway tables stay the seed's,
# the phase table is built from `phase_ticks`, and the vocabulary is the tokenizer's.
BRAIN_FIELDS_NOT_IN_CONFIG = ("areas", "pathways", "phases", "vocab_size")
SEED_PHASE_TICKS = inspect.signature(seed_phases).parameters["ticks"].default


def brain_fields(**overrides) -> ml_collections.ConfigDict:
  """Every settable BrainConfig field at its default (implementation: "auto"), then
  `overrides`."""
  values = {f.name: f.default for f in dataclasses.fields(BrainConfig)
            if f.name not in BRAIN_FIELDS_NOT_IN_CONFIG and f.default is not dataclasses.MISSING}
  values["phase_ticks"] = SEED_PHASE_TICKS
  # "auto": the Pallas kernels on a GPU (one device or data parallel), XLA elsewhere
  # (`train.resolve_implementation`); "xla" or "pallas" to choose.
  values["implementation"] = "auto"
  return _with_overrides(values, overrides, "brain")


def plasticity_fields(**overrides) -> ml_collections.ConfigDict:
  """Every PlasticityConfig field at its default, then `overrides`."""
  values = {f.name: f.default for f in dataclasses.fields(PlasticityConfig)
            if f.default is not dataclasses.MISSING}
  return _with_overrides(values, overrides, "plasticity")


def _with_overrides(values: dict, overrides: dict, section: str) -> ml_collections.ConfigDict:
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ValueError(f"{section}: unknown fields {unknown}; known: {sorted(values)}")
  values.update(overrides)
  return ml_collections.ConfigDict(values)


# docs/LEARNING.md's best local-rule readout (2026-12-02): every area read, 100 ms traces,
# slow readout features (2.1779 held-out bits/byte after one pass over the plays, against
# 2.2736 with Broca's readout alone).
READ_ALL = tuple(a for a in AREA_NAMES if a != BrainConfig.readout_area)  # besides Broca


def use_best_readout(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the brain fields of the best local-rule recipe on `config` (returned)."""
  config.brain.readout_also = READ_ALL
  config.brain.tau_trace_ms = 100.0
  config.brain.readout_slow_decay = 0.85
  return config


def base_config() -> ml_collections.ConfigDict:
  """The full-size brain on the default corpus; every field any config may set."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.run_dir = "runs/default"
  config.resume = "auto"
  config.init_from = ""
  config.brain = brain_fields()
  config.plasticity = plasticity_fields()
  config.data = ml_collections.ConfigDict(dict(
      files="",
      dataset_name="shakespeare",
      split="train",
      streaming=True,
      tokenizer="",
      vocab_size=4096,
      sample_chars=20_000_000,
      max_seq_length=2048,
      num_epochs=1,
      num_shards=0,
      layout="packed",
  ))
  config.train = ml_collections.ConfigDict(dict(
      mode="local",
      batch_size=128,
      tokens_per_chunk=512,
      max_chunks=0,
      learning_rate=3e-3,
      lr_decay_chunks=0,
      grad_clip=1.0,
      weight_decay=0.0,
      log_interval=100,
      checkpoint_interval=500,
      keep_checkpoints=3,
      gpu_device=0,
      max_nonfinite_chunks=3,
      rollback_lr_factor=0.5,
      max_rollbacks=3,
  ))
  # The device mesh: data x model; 1 x 1 is one device (train.gpu_device). Data parallel
  # splits the B streams (batch_size must divide by `data`); model parallel splits the
  # neuron blocks (docs/SHARDING.md). Several hosts: data x model = all their devices.
  config.mesh = ml_collections.ConfigDict(dict(data=1, model=1))
  config.train.chunk_len = (config.train.get_ref("tokens_per_chunk")
                            // config.train.get_ref("batch_size"))
  return config
