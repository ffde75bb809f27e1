r"""Trains the brain.

  python -m experiments.train --config=tiny
  python -m experiments.train --config=slimpajama --config.train.learning_rate=1e-4
  python -m experiments.train --config=experiments/configs/default.py --run_dir=runs/a
  python -m experiments.train --config=tiny --config.data.files='texts/*.txt' --resume=no
  python -m experiments.train --config=tiny --init_from=runs/a --run_dir=runs/a-finetune

`--config` takes a name from experiments/configs/ or a path; `--config.SECTION.FIELD=...`
overrides any field (see experiments/configs/common.py). With checkpoints in the run
directory, `--resume=auto` (default) asks "Load checkpoint? (y/n)" on a terminal and
loads without asking otherwise; `--resume=yes|no` decide for scripts. Ctrl-C (SIGINT) or
SIGTERM saves a checkpoint and exits; the same command resumes.

Several hosts: one process per host, the same command on each, plus where to meet:

  python -m experiments.train --config=default --config.mesh.data=16 \
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0   # 1 on the other

(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; under SLURM's srun or
Open MPI's mpirun they are found by themselves). Each process reads its own shard of the
documents into its own streams; `--run_dir` must be on a file system all hosts share.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from neurogen_jax import corpus, sharding
from neurogen_jax import train as train_lib
from neurogen_jax.checkpoint import CheckpointError
from neurogen_jax.corpus import DataSourceError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_HELPERS = ("common", "__init__")

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(CONFIG_DIR / "default.py"),
    "A config name (default, tiny, slimpajama) or the path of a config file.", lock_config=True)
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (default: the config's run_dir).")
_RESUME = flags.DEFINE_enum("resume", None, list(train_lib.RESUME_CHOICES),
                            "Load the run's latest checkpoint: auto (ask on a terminal, else "
                            "yes), yes, or no (start afresh). Default: the config's (auto).")
_INIT_FROM = flags.DEFINE_string("init_from", None, "Fine-tune: start from this checkpoint's (or "
                                 "run's latest) weights, with a fresh optimizer and data.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Several hosts: 'host:port' of process 0, the same on every "
    "host (default: $JAX_COORDINATOR_ADDRESS, or the cluster's).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Several hosts: how many processes (one per host) take part "
    "(default: $JAX_NUM_PROCESSES, or the cluster's; 1 = a single process).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Several hosts: this process's index, 0 .. num_processes-1 "
    "(default: $JAX_PROCESS_ID, or the cluster's).")
_DETECT_CLUSTER = flags.DEFINE_bool(
    "detect_cluster", True, "Without the three settings above, join the processes of a SLURM "
    "srun step, an Open MPI mpirun or a Cloud TPU slice, as jax.distributed does.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", str(corpus.cache_root() / "xla"),
    "Directory of compiled XLA programs reused by later runs ('' = off).")


def config_argv(argv: list[str]) -> list[str]:
  """Rewrites `--config=NAME` (no slash, no .py) into the path of experiments/configs/NAME.py."""
  out = []
  for i, arg in enumerate(argv):
    value, prefix = None, None
    if arg.startswith("--config="):
      prefix, value = "--config=", arg[len("--config="):]
    elif i > 0 and argv[i - 1] == "--config":
      prefix, value = "", arg
    if value is not None and "/" not in value and not value.endswith(".py"):
      name, sep, rest = value.partition(":")
      path = CONFIG_DIR / f"{name}.py"
      if name in CONFIG_HELPERS or not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in CONFIG_HELPERS)
        sys.exit(f"error: no config named {name!r}; choose one of {names} or give a file path.")
      arg = f"{prefix}{path}{sep}{rest}"
    out.append(arg)
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Before anything touches a device (jax.distributed's rule); a no-op for one process.
  try:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    detect_cluster=_DETECT_CLUSTER.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if _COMPILATION_CACHE.value:
    train_lib.enable_compilation_cache(_COMPILATION_CACHE.value)
  config = _CONFIG.value
  if _RUN_DIR.value is not None:
    config.run_dir = _RUN_DIR.value
  if _RESUME.value is not None:
    config.resume = _RESUME.value
  if _INIT_FROM.value is not None:
    config.init_from = _INIT_FROM.value
  try:
    trainer = train_lib.Trainer(config)
    result = trainer.train()
  except (train_lib.ConfigError, train_lib.TrainingDivergedError, DataSourceError,
          CheckpointError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:  # before the loop, or a second Ctrl-C inside it
    sys.exit("Interrupted; nothing more was saved.")
  process = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
  print(f"{process}{result.stopped}: step {result.step}, {result.tokens:,} tokens, mean loss "
        f"{result.loss:.4f} nats/token; checkpoint {result.checkpoint}", file=sys.stderr)


def run() -> None:
  app.run(main, argv=config_argv(sys.argv))


if __name__ == "__main__":
  run()
