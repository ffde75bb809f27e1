"""Shared test set-up: CPU by default, offline hub, GPU tests skipped cleanly without a GPU."""

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

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def _has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.devices() has none)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
