"""The brain learns over a longer run (tests/test_learning.py's other half, in a file of its
own so that the two run side by side under `pytest -n 2 --dist loadfile`): with every
mechanism on, dopamine has both signs, homeostasis keeps every area in its band (and
without it the same brain leaves the band), tags are captured. Tiny brain (`tiny_config`,
2,496 neurons, 20 ticks per token), byte tokens."""

import numpy as np
import pytest

from neurogen_jax.config import tiny_config
from neurogen_jax.plasticity import PlasticityConfig
from neurogen_jax.tokenizer import ByteTokenizer
from test_learning import grammar, streams_of, train


# ------------------------------------------------ a longer run with every mechanism on


@pytest.fixture(scope="module")
def long_run():
  """All mechanisms, 4 streams x 80 chunks x 16 tokens (1,280 tokens per stream)."""
  cfg = tiny_config()
  ids = np.array(ByteTokenizer().encode(grammar(1, 1100)))
  streams = streams_of(ids, 4, 16, 80)
  return cfg, train(cfg, PlasticityConfig(), streams, 16, unigram_ids=ids), streams


@pytest.mark.slow
def test_dopamine_is_a_prediction_error_of_both_signs(long_run):
  _, (_, _, history), _ = long_run
  da = np.array([h.plastic["dopamine"] for h in history])
  print("dopamine per chunk: min %.3f max %.3f mean %.3f, positive in %d of %d chunks"
        % (da.min(), da.max(), da.mean(), (da > 0).sum(), da.size))
  assert (da > 0.02).sum() >= 10 and (da < -0.02).sum() >= 10
  assert abs(da.mean()) < da.std()  # centred: reward minus its running mean


@pytest.mark.slow
def test_homeostasis_keeps_every_area_in_its_band(long_run):
  cfg, (_, ts, history), streams = long_run
  pcfg = PlasticityConfig()
  lo, hi = pcfg.rate_band
  rates = np.array([h.rates_A for h in history])  # [chunks, areas]
  print("area rates over the run: min", rates.min(axis=0), "max", rates.max(axis=0))
  assert rates.min() > lo and rates.max() < hi, rates
  rate_N = np.asarray(ts.brain_state.rate_N)
  print("neurons outside the band at the end: %.4f" % np.mean((rate_N < lo) | (rate_N > hi)))
  assert np.mean((rate_N < lo) | (rate_N > hi)) < 0.02
  # The control: without homeostasis the other rules drive the same brain out of the band.
  _, _, off = train(cfg, pcfg.replace(homeostasis=False), streams[:, :8 * 16 + 1], 16)
  off_rates = np.array([h.rates_A for h in off])
  print("without homeostasis: max area rate per chunk", off_rates.max(axis=1))
  assert off_rates[-1].max() > 2 * hi


@pytest.mark.slow
def test_tags_are_captured_when_dopamine_is_high(long_run):
  _, (_, _, history), _ = long_run
  captured = np.array([h.plastic["captured"] for h in history])
  tags = np.array([h.plastic["tag_fraction"] for h in history])
  print("captured max %.2e, tag fraction max %.3f" % (captured.max(), tags.max()))
  assert captured.max() > 0 and tags.max() > 0.05
