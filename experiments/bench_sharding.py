"""The sharded training step against the plain one: same state, same batch, ms per chunk.

    python -m experiments.bench_sharding                       # 1-device mesh vs plain jit
    python -m experiments.bench_sharding --mesh=8,1 --batch=512 --noplain   # 8 GPUs, data
    python -m experiments.bench_sharding --mesh=1,2 --scale=2  # model parallel

On one device the mesh path (`sharding.sharded_train_chunk` on a 1x1 mesh) must cost
what the plain `learning.train_chunk` costs: the ratio line is the check. On several
devices it gives the tokens/s of a mesh (weak scaling: grow --batch with the data axis;
strong scaling: keep it). Both paths chain their output state into the next call (the
mesh path donates its input), `--repeats` timed calls of each after one warm-up, the
paths alternating, median reported.
The first call of each path starts from the same state on the same tokens; the loss
difference of that call is printed as a check that both computed the same thing.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags

from neurogen_jax import learning, sharding
from neurogen_jax.config import BrainConfig
from neurogen_jax.plasticity import PlasticityConfig

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "global number of streams B (split over the mesh's data axis)")
flags.DEFINE_integer("tokens", 8, "tokens per stream per chunk (one train_chunk call)")
flags.DEFINE_integer("repeats", 5, "timed calls per path (median reported)")
flags.DEFINE_float("scale", 1.0, "brain scale (1 = 79,872 neurons)")
flags.DEFINE_integer("vocab_size", 4096, "vocabulary (the default configs' sentencepiece size)")
flags.DEFINE_string("implementation", "xla", "xla or pallas")
flags.DEFINE_string("mesh", "1,1", "data,model axis sizes of the mesh")
flags.DEFINE_bool("plain", True, "also time plain learning.train_chunk on one device")
flags.DEFINE_string("out", "", "JSON-lines output file")


def bench_mesh_overhead(config: BrainConfig, batch: int, tokens: int, repeats: int,
                        mesh_shape: tuple[int, int] = (1, 1), plain: bool = True) -> dict:
  """Times `sharded_train_chunk` on a data x model mesh and, with `plain`, the plain step.

  The two paths' timed calls alternate, so that a drifting clock or a busy neighbour
  slows both alike.
  """
  pcfg = PlasticityConfig()
  opt = learning.make_optimizer(1e-3)
  kw = dict(config=config, pcfg=pcfg, optimizer=opt)
  key = jax.random.PRNGKey(0)
  tokens_BxL = np.asarray(jax.random.randint(key, (batch, tokens + 1), 0, config.vocab_size), np.int32)
  inputs, targets = tokens_BxL[:, :-1], tokens_BxL[:, 1:]
  mesh = sharding.make_mesh(*mesh_shape)
  mesh_step = sharding.sharded_train_chunk(
      mesh, sharding.abstract_train_state(config, pcfg, opt, batch, mesh), **kw)
  feed = lambda x: sharding.shard_batch(x, mesh)
  paths = {"mesh": (lambda ts: mesh_step(ts, feed(inputs), feed(targets)),
                    sharding.init_train_state(config, pcfg, opt, key, batch, mesh))}
  if plain:
    plain_init = jax.jit(lambda k: learning.init_train_state(config, pcfg, opt, k, batch))
    paths["plain"] = (lambda ts: learning.train_chunk(ts, inputs, targets, **kw), plain_init(key))
  states, row = {}, {}
  for name, (step, ts) in paths.items():  # compile + first call, from the same state
    start = time.perf_counter()
    states[name], metrics = step(ts)
    row[f"{name}_first_loss"] = float(metrics.loss)
    row[f"{name}_compile_s"] = time.perf_counter() - start
  times = {name: [] for name in paths}
  for _ in range(repeats):
    for name, (step, _) in paths.items():
      start = time.perf_counter()
      states[name], metrics = step(states[name])
      jax.block_until_ready((states[name], metrics))
      times[name].append(time.perf_counter() - start)
  row.update(device=jax.devices()[0].device_kind, devices=mesh.size, mesh=list(mesh_shape),
             batch=batch, tokens=tokens, neurons=config.num_neurons,
             implementation=config.implementation, date=time.strftime("%Y-%m-%d"))
  for name, t in times.items():
    sec = float(np.median(t))
    row.update({f"{name}_ms_per_chunk": sec * 1e3, f"{name}_tokens_per_s": batch * tokens / sec})
  if plain:
    row["mesh_over_plain"] = row["mesh_ms_per_chunk"] / row["plain_ms_per_chunk"]
    row["first_loss_diff"] = abs(row["mesh_first_loss"] - row["plain_first_loss"])
  return row


def main(argv):
  del argv
  mesh_shape = tuple(int(v) for v in FLAGS.mesh.split(","))
  config = BrainConfig(scale=FLAGS.scale, vocab_size=FLAGS.vocab_size,
                       implementation=FLAGS.implementation)
  print(f"brain: {config.num_neurons} neurons, {config.num_synapses / 1e6:.1f}M synapses; "
        f"B={FLAGS.batch}, {FLAGS.tokens} tokens/chunk; mesh data,model={mesh_shape} of "
        f"{jax.device_count()} {jax.devices()[0].device_kind}", flush=True)
  row = bench_mesh_overhead(config, FLAGS.batch, FLAGS.tokens, FLAGS.repeats, mesh_shape, FLAGS.plain)
  print(f"  mesh  {row['mesh_ms_per_chunk']:9.2f} ms/chunk {row['mesh_tokens_per_s']:10.1f} tok/s "
        f"(compile+first {row['mesh_compile_s']:.0f} s)")
  if FLAGS.plain:
    print(f"  plain {row['plain_ms_per_chunk']:9.2f} ms/chunk {row['plain_tokens_per_s']:10.1f} tok/s "
          f"(compile+first {row['plain_compile_s']:.0f} s)")
    print(f"  mesh / plain = {row['mesh_over_plain']:.3f}; first-chunk loss difference "
          f"{row['first_loss_diff']:.2e} nats")
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
