"""The full-size brain learning at B = 256 (lean dtypes, local rules, all mechanisms) with the
Triton and the Mosaic GPU synapse update on the same byte stream of the training plays: the
chunk losses should track each other (the backends differ only in the float32 order of the
dW sums). Session 20's learn_eq.py with `synapse_backend` in place of `propagation_backend`.

  python docs/results/s22_2026-12-03_h200/learn_eq.py 100 > learn_eq.jsonl"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.getcwd())

from neurogen_jax import corpus, learning  # noqa: E402
from neurogen_jax.config import BrainConfig  # noqa: E402
from neurogen_jax.plasticity import PlasticityConfig  # noqa: E402

B, L, CHUNKS = 256, 4, int(sys.argv[1]) if len(sys.argv) > 1 else 60
train_files, _ = corpus.shakespeare_split()
data = np.frombuffer(b"".join(f.read_bytes() for f in train_files), np.uint8).astype(np.int32)
span = len(data) // B
streams = np.stack([data[i * span:(i + 1) * span] for i in range(B)])
for backend in ["triton", "mosaic_gpu"]:
  cfg = BrainConfig(implementation="pallas", vocab_size=256, state_dtype="bfloat16",
                    current_dtype="bfloat16", readout_matmul_dtype="bfloat16",
                    synapse_backend=backend)
  pcfg, opt = PlasticityConfig(), learning.make_optimizer(1e-3)
  ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), B)
  step = jax.jit(lambda ts, x, y: learning.train_chunk(ts, x, y, config=cfg, pcfg=pcfg,
                                                       optimizer=opt))
  losses, t0 = [], time.perf_counter()
  for c in range(CHUNKS):
    seq = jnp.asarray(streams[:, c * L:c * L + L + 1])
    ts, m = step(ts, seq[:, :-1], seq[:, 1:])
    losses.append(float(m.loss))
  print(json.dumps(dict(backend=backend, B=B, tokens_per_chunk=L, chunks=CHUNKS,
                        first=losses[0], last10=float(np.mean(losses[-10:])),
                        seconds=round(time.perf_counter() - t0, 1),
                        losses=[round(x, 4) for x in losses])), flush=True)
