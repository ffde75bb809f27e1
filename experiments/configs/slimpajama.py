"""The seed's TrainingConfig: full-size brain on SlimPajama-627B, streamed from the hub.

Seed field -> here:
  vocab_size 50257           data.vocab_size (a sentencepiece BPE of that size is trained
                             on a sample of the stream and saved with every checkpoint)
  embedding_dim 512          brain.embedding_dim
  dataset_name, streaming    data.dataset_name ("cerebras/SlimPajama-627B"; SlimPajama-6B
                             is the fallback when it cannot be opened), data.streaming
  max_seq_length 512         data.max_seq_length: documents reach the streams in segments
                             of at most 512 tokens, each followed by eos
  tokens_per_chunk 10000     train.tokens_per_chunk: 16 streams x 625 tokens per chunk
  max_chunks 1000            train.max_chunks
  checkpoint_interval 100    train.checkpoint_interval (chunks)
  log_interval 10            train.log_interval (chunks)
  learning_rate 1e-3         train.learning_rate
  gpu_device 0               train.gpu_device
The brain reads every area with slow readout features (`common.use_best_readout`, the
recipe of docs/LEARNING.md; measured on the Shakespeare corpus and the larger PyPI corpus,
not on SlimPajama, which the GPU machines cannot reach).
Offline, train on local SlimPajama chunks instead:
  python -m experiments.train --config=slimpajama --config.data.files='chunks/*.jsonl.zst'
"""

from experiments.configs import common


def get_config():
  config = common.use_best_readout(common.base_config())
  config.run_dir = "runs/slimpajama"
  config.brain.embedding_dim = 512
  config.data.dataset_name = "cerebras/SlimPajama-627B"
  config.data.streaming = True
  config.data.vocab_size = 50257
  config.data.sample_chars = 20_000_000
  config.data.max_seq_length = 512
  config.train.batch_size = 16
  config.train.tokens_per_chunk = 10000
  config.train.max_chunks = 1000
  config.train.checkpoint_interval = 100
  config.train.log_interval = 10
  config.train.learning_rate = 1e-3
  config.train.gpu_device = 0
  return config
