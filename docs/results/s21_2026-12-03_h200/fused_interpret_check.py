"""RECORD (session 21): fused_mgpu.py against `neuron_update.propagate_tick_reference` in
interpret mode on CPU (4 post blocks of 64 neurons, K = 3, 2 phases: driven / read).
Run from the repository root:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    CH=32 NB=1 python3 docs/results/s21_2026-12-03_h200/fused_interpret_check.py 256"""
import os, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, '.')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fused_mgpu  # noqa: E402
from neurogen_jax.pallas import neuron_update  # noqa: E402
import tests.test_pallas as tp  # noqa: E402

T, K, R, G = 64, 3, 4, 3
N = R * T
B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
tp.NUM_BLOCKS = R
col, w, gain = tp.layout(3, T, K)
q = tp.spikes(4, (B, N), 0.3)
v, i, a, tr, _, drive, gate, vec, read, post, spk = tp.tick_inputs(5, B, N, True)
v, i, a, tr = (z.astype(jnp.bfloat16) for z in (v, i, a, tr))
drive = drive.astype(jnp.bfloat16)
idx = jnp.arange(N)
group = jnp.where(idx < 2 * T, idx // T, idx % G).astype(jnp.int32)
vec = vec.at[2].set(jnp.where(idx < T, vec[2], 0.0))  # only block 0 driven
vec = vec.at[3].set(jnp.where((idx // T) % 2 == 1, 0.7, 0.0))  # blocks 1 and 3 read
rows = neuron_update.tick_rows(jnp.stack([vec, vec.at[3].set(0.0)]), group, G, batch=B,
                               fused_tile=T)
kw = dict(**tp.ALIF, n_groups=G, write_s=False)
c = neuron_update.AlifConstants(*(float(tp.ALIF[k]) for k in neuron_update.AlifConstants._fields))
for ph in (0, 1):
  ref = neuron_update.propagate_tick_reference(q, w, col, gain, v, i, a, tr, drive, gate,
                                               rows.at(ph), read, post, spk, group, **kw)
  out = jax.jit(lambda *x: fused_mgpu.propagate_tick(
      *x, constants=c, n_groups=G, interpret=True, chunk=int(os.environ.get("CH", 32)),
      nbuf=int(os.environ.get("NB", 1))))(q, w, col, gain, v, i, a, tr, drive, gate,
                                           rows.at(ph), read, post, spk)
  for name, o, r in zip("v i a tr s q read post spk counts".split(), out, ref):
    if o is not None:
      d = np.abs(np.asarray(o, np.float32) - np.asarray(r, np.float32))
      print(ph, name, "max |diff|", d.max())
