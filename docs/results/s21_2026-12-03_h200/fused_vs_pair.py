"""RECORD (session 21): the full-size fused kernel (fused_mgpu.py here) against the pair the
brain runs (the Mosaic GPU propagation with a bfloat16 current, then the Triton tick), on an
H200: one tick from the same inputs compared value by value (phase 0 driven, phase 3 read),
then 10-tick scans timed by the wall clock over chained calls (experiments.timing, chain).
Run from the repository root: VARIANTS=chunk/nbuf/steps,... G=groups python3 <this> 2048,256"""
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, '.')
from neurogen_jax.pallas import neuron_update, propagate
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fused_mgpu  # the record beside this script
from experiments import timing

R, K, T = 624, 8, 128
N = R * T
G = int(os.environ.get("G", 7))
ALIF = dict(a_s=0.78, a_m=0.78, a_a=0.975, a_t=0.9, beta=0.5, threshold=1.0, width=0.5)
C = neuron_update.AlifConstants(*[float(ALIF[k]) for k in ("a_s","a_m","a_a","a_t","beta","threshold","width")])
out = []

def inputs(B, seed=0):
  ks = jax.random.split(jax.random.key(seed), 16)
  col = jax.random.randint(ks[0], (R, K), 0, R)
  w = jax.random.uniform(ks[1], (R, K, T, T), minval=0.0, maxval=0.08).astype(jnp.bfloat16)
  gain = jax.random.uniform(ks[2], (R, K), minval=-1.0, maxval=1.5)
  on = jax.random.uniform(ks[3], (B, N)) < 0.03
  sign_N = jnp.where(jnp.arange(N) % 5 == 0, -1.0, 1.0)
  q = (on * sign_N).astype(jnp.bfloat16)
  bf = lambda k, lo, hi: jax.random.uniform(ks[k], (B, N), minval=lo, maxval=hi).astype(jnp.bfloat16)
  v, i, a, tr = bf(4, -0.5, 1.0), bf(5, -0.5, 1.5), bf(6, 0, 0.5), bf(7, 0, 1)
  drive = (jax.random.normal(ks[8], (B, N)) * 0.5).astype(jnp.bfloat16)
  gate = jax.random.uniform(ks[9], (B,), minval=0.2, maxval=1.8)
  read = jax.random.uniform(ks[10], (B, N))
  post, spk = bf(11, 0, 1), jnp.zeros((B, N), jnp.bfloat16)
  idx = jnp.arange(N)
  area = jnp.minimum(idx // 13312, 5)
  group = jnp.where((area == 5) & (idx % 2 == 0), 6, area).astype(jnp.int32)
  theta = jax.random.uniform(ks[12], (N,), maxval=0.2)
  mask = (area == 2).astype(jnp.float32)
  vecs = []
  for ph in range(5):
    gain_in = jnp.where(idx < 18432, 1.0, 0.0) * (ph < 3)
    read_w = jnp.where(area == 2, 0.3, 0.0) * (ph >= 3)
    vecs.append(jnp.stack([theta, mask, gain_in, read_w, jnp.ones((N,)), sign_N]))
  gr = group if G else None
  rows = neuron_update.tick_rows(jnp.stack(vecs), gr, G, batch=B, fused_tile=T)
  rows_pair = neuron_update.tick_rows(jnp.stack(vecs), gr, G, batch=B)
  group = gr
  return (q, w, col, gain), (v, i, a, tr, drive, gate, read, post, spk), (rows, rows_pair), group

VARIANT = dict(chunk=32, nbuf=1, steps=2)
def tick_fused(prop_in, st, rows, ph):
  q, w, col, gain = prop_in
  v, i, a, tr, drive, gate, read, post, spk = st
  o = fused_mgpu.propagate_tick(q, w, col, gain, v, i, a, tr, drive, gate, rows[0].at(ph), read, post, spk,
                                constants=C, n_groups=G, **VARIANT)
  return o

def tick_pair(prop_in, st, rows, ph, group):
  q, w, col, gain = prop_in
  v, i, a, tr, drive, gate, read, post, spk = st
  prop = propagate.propagate(q, w, col, gain, backend="mosaic_gpu", out_dtype=jnp.bfloat16)
  o = neuron_update.alif_tick(v, i, a, tr, prop, drive, gate, rows[1].at(ph), read, post, spk, group,
                              **ALIF, n_groups=G, write_s=False)
  return o

def run(B, ticks=10):
  prop_in, st, rows, group = inputs(B)
  res = {"B": B}  # the value comparison below runs the first of VARIANTS
  c_, n_, s_ = map(int, os.environ.get("VARIANTS", "32/1/2").split(",")[0].split("/"))
  VARIANT.update(chunk=c_, nbuf=n_, steps=s_)
  # correctness: one tick from the same inputs, two phases (driven, reading)
  for ph in (0, 3):
    f = jax.jit(tick_fused)(prop_in, st, rows, ph)
    p = jax.jit(tick_pair)(prop_in, st, rows, ph, group)
    names = "v i a tr s q read post spk counts".split()
    for n_, x, y in zip(names, f, p):
      if x is None: continue
      x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
      d = np.abs(x32 - y32)
      res[f"ph{ph}_{n_}_maxdiff"] = float(d.max())
      res[f"ph{ph}_{n_}_frac_off"] = float(np.mean(d > 1e-2 * (1 + np.abs(y32))))
    res[f"ph{ph}_rate"] = float(np.mean(np.abs(np.asarray(p[5], np.float32))))
  phases = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3, 4, 4][:ticks], jnp.int32)
  def loop(kind):
    def f(carry, prop_rest, rows, group):
      def body(c, ph):
        q, st = c
        if kind == "fused":
          o = tick_fused((q,) + prop_rest, st, rows, ph)
        else:
          o = tick_pair((q,) + prop_rest, st, rows, ph, group)
        v, i, a, tr, _, qn, read, post, spk = o[:9]
        return (qn, (v, i, a, tr, st[4], st[5], read, post, spk)), None
      c, cs = jax.lax.scan(body, carry, phases)
      return c
    return jax.jit(f, donate_argnums=0)
  print(json.dumps(res), flush=True)
  variants = [dict(chunk=int(c), nbuf=int(n), steps=int(st_)) for c, n, st_ in
              (v.split("/") for v in os.environ.get("VARIANTS", "32/1/2").split(","))]
  for kind, var in [("pair", None)] + [("fused", v) for v in variants] + [("pair", None)]:
    if var: VARIANT.update(var)
    fn = loop(kind)
    prop_in, st, rows, group = inputs(B)
    carry = (prop_in[0], st)
    us = timing.time_us(fn, carry, prop_in[1:], rows, group, iters=5, chain=True)
    name = kind if var is None else f"fused_c{var['chunk']}_b{var['nbuf']}_s{var['steps']}"
    res.setdefault(f"{name}_us_per_tick", []).append(us / ticks)
    print(B, name, us / ticks, flush=True)
  return res

for B in [int(x) for x in sys.argv[1].split(",")]:
  try:
    r = run(B)
  except Exception as e:
    import traceback; traceback.print_exc(); r = {"B": B, "error": repr(e)[:2000]}
  print(json.dumps(r), flush=True)
  out.append(r)
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "fz_gpu.json"), "w"), indent=1)
