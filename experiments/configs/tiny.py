"""A tiny brain (scale 1/32, 16-neuron tiles: 2,496 neurons, 5 ticks per token) on bytes.

What the tests run: seconds per run on a CPU. Defaults to the Shakespeare corpus; point
it at any local text with --config.data.files='notes/*.txt'.
  python -m experiments.train --config=tiny --config.data.files='my/*.txt'
"""

from experiments.configs import common


def get_config():
  config = common.base_config()
  config.run_dir = "runs/tiny"
  config.brain = common.brain_fields(scale=1 / 32, tile=16, fan_in_tiles=8, embedding_dim=64,
                                     phase_ticks=(1, 1, 1, 1, 1))
  config.plasticity = common.plasticity_fields(replay_size=32, replay_every=4, replay_batch=4)
  config.data.tokenizer = "bytes"
  config.data.sample_chars = 100_000
  config.data.max_seq_length = 256
  config.data.num_epochs = 0
  config.train.batch_size = 4
  config.train.tokens_per_chunk = 64
  config.train.max_chunks = 8
  config.train.learning_rate = 1e-2
  config.train.log_interval = 2
  config.train.checkpoint_interval = 4
  config.train.keep_checkpoints = 2
  return config
