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
