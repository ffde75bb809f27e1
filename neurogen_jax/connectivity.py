"""Block-sparse connectivity generated deterministically from a key, as arrays.

Every post block of T neurons receives `fan_in_tiles` (K) tiles. The K slots of an
area's blocks are shared among the pathways into that area in proportion to their
`share`; each slot picks a pre block of the pathway's source area (without repeats
while the source has enough blocks). The only Python loops are over areas and
pathways (a handful), never over neurons or blocks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax.config import BrainConfig


class Connectivity(NamedTuple):
  """Static structure of the brain (integer/sign data, not trained).

  col_RxK: pre block read by tile (r, k).
  pathway_RxK: index into `config.pathways` of tile (r, k).
  sign_N: +1 excitatory / -1 inhibitory pre-synaptic neuron (Dale's law).
  area_N: area index of each neuron.
  """

  col_RxK: jax.Array
  pathway_RxK: jax.Array
  sign_N: jax.Array
  area_N: jax.Array


def allocate_slots(config: BrainConfig) -> dict[str, list[tuple[int, int]]]:
  """For each target area, [(pathway index, number of tile slots)] summing to K.

  Largest-remainder split of K by `share`; every pathway gets at least one slot when
  K allows it (a pathway with no tiles would carry no current).
  """
  k = config.fan_in_tiles
  out = {}
  for area in config.area_names:
    incoming = [(i, p.share) for i, p in enumerate(config.pathways) if p.target == area]
    if len(incoming) > k:
      raise ValueError(f"area {area!r} has {len(incoming)} incoming pathways but fan_in_tiles={k}; "
                       f"raise fan_in_tiles to at least {len(incoming)}")
    total = sum(s for _, s in incoming)
    exact = [k * s / total for _, s in incoming]
    counts = [max(1, int(e)) for e in exact]
    while sum(counts) > k:  # the max(1, .) floor may overshoot: take from the largest
      j = int(np.argmax(counts))
      counts[j] -= 1
    order = np.argsort([-(e - int(e)) for e in exact], kind="stable")
    j = 0
    while sum(counts) < k:
      counts[int(order[j % len(order)])] += 1
      j += 1
    out[area] = [(i, c) for (i, _), c in zip(incoming, counts)]
  return out


def _choose_blocks(key: jax.Array, n_rows: int, n_src: int, n_pick: int) -> jax.Array:
  """[n_rows, n_pick] pre blocks in [0, n_src): distinct per row while n_pick <= n_src."""
  if n_pick <= n_src:
    scores = jax.random.uniform(key, (n_rows, n_src))
    return jnp.argsort(scores, axis=1)[:, :n_pick].astype(jnp.int32)
  return jax.random.randint(key, (n_rows, n_pick), 0, n_src, dtype=jnp.int32)


def build_connectivity(config: BrainConfig, key: jax.Array) -> Connectivity:
  """Deterministic block-sparse structure from `key`."""
  t = config.tile
  names = config.area_names
  block_off = [o // t for o in config.area_offsets]
  block_num = [s // t for s in config.area_sizes]
  slots = allocate_slots(config)
  k_struct, k_sign = jax.random.split(key)
  col_rows, pw_rows = [], []
  for ai, area in enumerate(names):
    cols, pws = [], []
    for pi, count in slots[area]:
      src = names.index(config.pathways[pi].source)
      sub = jax.random.fold_in(k_struct, pi)
      cols.append(block_off[src] + _choose_blocks(sub, block_num[ai], block_num[src], count))
      pws.append(jnp.full((block_num[ai], count), pi, jnp.int32))
    col_rows.append(jnp.concatenate(cols, axis=1))
    pw_rows.append(jnp.concatenate(pws, axis=1))
  col_RxK = jnp.concatenate(col_rows, axis=0)
  pathway_RxK = jnp.concatenate(pw_rows, axis=0)

  signs, area_ids = [], []
  for ai, (spec, size) in enumerate(zip(config.areas, config.area_sizes)):
    n_inh = int(round(size * (1.0 - spec.excitatory_fraction)))
    perm = jax.random.permutation(jax.random.fold_in(k_sign, ai), size)
    signs.append(jnp.where(perm < n_inh, -1.0, 1.0).astype(jnp.float32))
    area_ids.append(jnp.full((size,), ai, jnp.int32))
  return Connectivity(col_RxK=col_RxK, pathway_RxK=pathway_RxK,
                      sign_N=jnp.concatenate(signs), area_N=jnp.concatenate(area_ids))


def init_tiles(config: BrainConfig, conn: Connectivity, key: jax.Array) -> jax.Array:
  """Initial weight magnitudes w_RxKxTxT >= 0, in `config.weight_dtype`.

  |N(0,1)| * weight_scale / (fan-in * target_rate): at the target rate a neuron's summed
  excitatory input per tick is ~weight_scale (threshold units) whatever the brain's size.
  Inhibitory pre-synaptic rows are `inhibitory_scale` times stronger.
  """
  r, k, t = config.num_blocks, config.fan_in_tiles, config.tile
  # Drawn flat: the same values as drawing [R, K, T, T] (threefry counts the flat index),
  # but XLA:CPU compiles a rank-4 draw ~10x slower.
  mag = jnp.abs(jax.random.normal(key, (r * k * t * t,), jnp.float32)).reshape(r, k, t, t)
  pre_sign_RxKxT = conn.sign_N.reshape(-1, t)[conn.col_RxK]
  inh = jnp.where(pre_sign_RxKxT < 0, config.inhibitory_scale, 1.0)[..., None]
  w = mag * inh * (config.weight_scale / (k * t * config.target_rate))
  return w.astype(config.weight_dtype)


def pathway_gains(config: BrainConfig) -> np.ndarray:
  """[P, num_pathways]: each phase's effective gain of each pathway (gain x phase multiplier)."""
  base = np.array([p.gain for p in config.pathways], np.float32)
  mult = np.array([ph.pathway_gain for ph in config.phases], np.float32)
  return base[None, :] * mult
