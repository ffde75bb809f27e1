"""The full-size brain learning at B = 256 (lean dtypes, local rules, all mechanisms) with the
Triton and the Mosaic GPU propagation on the same byte stream of the training plays: the
chunk losses should track each other (the lowerings differ only in float32 rounding)."""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from neurogen_jax import corpus, learning
from neurogen_jax.config import BrainConfig
from neurogen_jax.plasticity import PlasticityConfig
B, L, CHUNKS = 256, 4, int(sys.argv[1]) if len(sys.argv) > 1 else 60
train_files, _ = corpus.shakespeare_split()
data = np.frombuffer(b"".join(f.read_bytes() for f in train_files), np.uint8).astype(np.int32)
span = len(data) // B
streams = np.stack([data[i * span:(i + 1) * span] for i in range(B)])
for backend in ["triton", "mosaic_gpu"]:
  cfg = BrainConfig(implementation="pallas", vocab_size=256, state_dtype="bfloat16",
                    current_dtype="bfloat16", readout_matmul_dtype="bfloat16",
                    propagation_backend=backend)
  pcfg, opt = PlasticityConfig(), learning.make_optimizer(1e-3)
  ts = learning.init_train_state(cfg, pcfg, opt, jax.random.PRNGKey(0), B)
  step = jax.jit(lambda ts, x, y: learning.train_chunk(ts, x, y, config=cfg, pcfg=pcfg, optimizer=opt))
  losses, t0 = [], time.perf_counter()
  for c in range(CHUNKS):
    seq = jnp.asarray(streams[:, c * L:c * L + L + 1])
    ts, m = step(ts, seq[:, :-1], seq[:, 1:])
    losses.append(float(m.loss))
  print(json.dumps(dict(backend=backend, B=B, tokens_per_chunk=L, chunks=CHUNKS,
                        first=losses[0], last10=float(np.mean(losses[-10:])),
                        seconds=round(time.perf_counter() - t0, 1), losses=[round(x, 4) for x in losses])),
        flush=True)
