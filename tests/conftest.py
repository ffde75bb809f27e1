"""Shared test set-up: CPU by default, offline hub, GPU tests skipped cleanly without a GPU."""

import functools
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One XLA compilation cache for the whole run, shared by both xdist workers and every
# subprocess the tests start (CLI runs inherit the variable): the suite compiles the same
# tiny-brain programs in many tests. A fresh directory per run, named by the process that
# imports this first (pytest's main process: the xdist workers inherit its environment),
# so no test reads programs of another run.
_RUN = str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"neurogen_jax_tests_xla_{_RUN}"))
# Every program goes into it, not only those that compile in over a second (jax's
# default): the workers and subprocesses compile the same small programs (eager ops,
# initialisers, optimizer steps) again and again. Measured: a tiny brain's eager
# `learning.init_train_state` takes 9.4 s in a fresh process, 2.2 s from the cache.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# On CPU (`make test`), XLA compiles without LLVM's expensive optimisation passes: the
# suite's time is mostly compiling tiny programs that then run for milliseconds (measured:
# test_eprop.py + test_model.py from an empty cache 125 -> 115 s). Inherited by the CLI
# subprocesses; tests that set XLA_FLAGS for a subprocess append to it.
# And Eigen's matmuls/convolutions on one thread: the tiny brain's are far too small to
# split (B = 4 streams), and with two xdist workers on 2 cores the extra threads only
# contend. Same values (chunk losses equal to the last digit); measured: a tiny-brain
# train_chunk of 4 x 16 tokens 1.22 -> 1.07-1.16 CPU-s, tests/test_long_run.py 32.1 ->
# 27.9 s alone and 47.4 -> 42.4 s with two copies side by side on the 2 cores.
if os.environ.get("JAX_PLATFORMS") == "cpu":
  for _flag in ("--xla_llvm_disable_expensive_passes=true", "--xla_cpu_multi_thread_eigen=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# The slowest files first: CPU seconds of each file (its tests and the processes they
# start) in a `make test` run on 2 cores (2026-12-02); the rest follow in their usual
# order. `make test` runs two xdist workers with `--dist loadfile`, which hands out whole
# files in this order (a worker takes its next file when it has two tests left): a slow
# file that starts last leaves one worker alone with it at the end, so the big files go
# first and the small ones fill in the end.
SLOW_FILES = {
    "test_pallas.py": 220,
    "test_sharding.py": 190,
    "test_train_cli_processes.py": 140,
    "test_learning.py": 120,
    "test_brain.py": 110,
    "test_train_cli.py": 95,
    "test_learning_long.py": 80,
    "test_reliability.py": 80,
    "test_state_dtype.py": 70,
    "test_fused_tick.py": 55,
    "test_model.py": 45,
    "test_learn_cli.py": 40,
    "test_eprop.py": 37,
    "test_long_run.py": 31,
    "test_lr_decay.py": 25,
    "test_evaluate.py": 24,
    "test_slow_readout.py": 22,
    "test_readout_areas.py": 21,
    "test_checkpoint.py": 17,
    "test_numerics.py": 13,
    "test_fuzz.py": 13,
    "test_neurons.py": 7,
    "test_bad_input.py": 6,
}


def _has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


def pytest_configure(config):
  # xdist would otherwise sort the files by their number of tests (`--loadscope-reorder`),
  # which puts the slow files with few tests last.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: files stay whole
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.devices() has none)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def kernels_on_this_device(monkeypatch):
  """implementation="pallas" runs here: compiled on a GPU; elsewhere the kernels that
  `ops` dispatches are swapped for their interpret-mode calls (and the jit cache of
  `cognitive_step` is cleared around the test, so no interpret trace outlives it)."""
  if jax.devices()[0].platform != "gpu":
    from neurogen_jax.pallas import events, neuron_update, propagate
    for module, name in ((events, "propagate_events_pallas"), (propagate, "propagate"),
                         (neuron_update, "alif_update"), (neuron_update, "alif_tick"),
                         (neuron_update, "propagate_tick")):
      monkeypatch.setattr(module, name, functools.partial(getattr(module, name), interpret=True))
  from neurogen_jax import brain
  brain.cognitive_step.clear_cache()
  yield
  brain.cognitive_step.clear_cache()
