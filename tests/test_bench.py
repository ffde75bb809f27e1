"""`experiments.bench` on the tiny brain (CPU, XLA): a timed point's row and its floor.

The GPU figures of docs/BENCHMARKS.md come from these functions; here they must produce a
consistent row: tokens/s from the time per tick, the tokens per timed call, the floor
from the state and weight bytes, and the configuration fields that tell rows apart.
"""

import pytest

from experiments import bench
from neurogen_jax.config import tiny_config


@pytest.mark.parametrize("learn", [False, True])
def test_bench_point_row_is_consistent(learn):
  cfg = tiny_config(readout_also=("pfc",), readout_matmul_dtype="bfloat16")
  batch, n_tokens = 2, 2
  row = bench.bench_point(cfg, batch, learn, n_tokens, repeats=1)
  assert row["learning"] is learn and row["tokens_per_call"] == n_tokens
  ticks = n_tokens * cfg.ticks_per_token
  seconds = row["us_per_tick"] * 1e-6 * ticks
  assert row["us_per_tick"] > 0
  assert row["tokens_per_s"] == pytest.approx(batch * n_tokens / seconds, rel=1e-6)
  bandwidth = 1e11
  row = bench._with_floor(row, cfg, bandwidth)
  floor_us = (cfg.num_synapses * 2 + 40 * cfg.num_neurons * batch) / bandwidth * 1e6
  assert row["floor_us_per_tick"] == pytest.approx(floor_us, rel=1e-6)
  assert row["pct_of_floor"] == pytest.approx(100 * floor_us / row["us_per_tick"], rel=1e-6)
  assert row["readout_matmul_dtype"] == "bfloat16"
  assert row["readout_areas"] == ["broca", "pfc"]
  assert row["bytes_per_neuron"] == 40



def test_tick_sweep_rows_name_their_block_shape_and_switch():
  """`python -m experiments.tick_sweep` in interpret mode (its own process: its flags share
  names with bench's): one row per (switch, variant), each with the kernel's block shape
  (the variant's optional third field caps block_n) and a time per tick (a difference of two
  timings: on a CPU in interpret mode it may come out either side of zero)."""
  import json
  import math
  import os
  import subprocess
  import sys

  cmd = [sys.executable, "-m", "experiments.tick_sweep", "--batch=16", "--neurons=2048",
         "--variants=2048:4,2048:4:256", "--ticks=1", "--collect=true", "--rows=brain",
         "--switches=default,onehot", "--interpret"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [(r["switch"], r["block_b"], r["block_n"]) for r in rows] == [
      ("default", 2, 1024), ("default", 8, 256), ("onehot", 2, 1024), ("onehot", 8, 256)]
  assert all(math.isfinite(r["us_per_tick"]) and r["rows"] == "brain" and r["collect"]
             for r in rows)
