"""The one dispatch point between XLA (pure jnp) and Pallas implementations.

Block-sparse layout ("ELL of blocks"): the N neurons form R = N / T row blocks of T
neurons. Post block r receives K tiles; tile k reads pre block `col_RxK[r, k]`, and
`w_RxKxTxT[r, k, t, u]` is the synapse from pre neuron `col[r,k]*T + t` to post
neuron `r*T + u`. Weights are non-negative magnitudes; signs (Dale's law) ride on the
pre-synaptic spikes and per-tile gains.

Only this module chooses an implementation; kernels take arrays, never brain objects.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from neurogen_jax.pallas import events as pallas_events
from neurogen_jax.pallas import neuron_update as pallas_neuron
from neurogen_jax.pallas import plasticity as pallas_plasticity
from neurogen_jax.pallas import propagate as pallas_propagate
from neurogen_jax.pallas.events import build_fanout
from neurogen_jax.pallas.neuron_update import (PhaseRows, alif_tick_reference,
                                               alif_update_reference, group_counts)
from neurogen_jax.pallas.plasticity import (SynapseRules, SynapseStats, synapse_update_reference,
                                            tile_outer_reference, tile_update_reference)
from neurogen_jax.pallas.propagate import propagate_reference

Implementation = Literal["xla", "pallas"]

__all__ = [
    "Implementation", "PhaseRows", "alif_tick", "alif_tick_reference", "alif_update",
    "alif_update_reference", "build_fanout", "group_counts", "propagate", "propagate_tick",
    "propagate_events", "propagate_reference", "SynapseRules", "SynapseStats", "synapse_update",
    "synapse_update_reference", "tick_rows", "tile_outer", "tile_outer_reference",
    "tile_update", "tile_update_reference",
]


def _check(implementation: str) -> None:
  if implementation not in ("xla", "pallas"):
    raise ValueError(f"implementation must be 'xla' or 'pallas', got {implementation!r}")


def _dense_propagate(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, implementation, out_dtype, backend):
  if implementation == "pallas":
    return pallas_propagate.propagate(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, out_dtype=out_dtype,
                                      backend=backend)
  return propagate_reference(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK).astype(out_dtype)


def propagate(spk_BxN: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array, gain_RxK: jax.Array,
              implementation: Implementation = "xla", *,
              fanout: tuple[jax.Array, jax.Array] | None = None,
              max_events: int | None = None, events_variant: str = "tiles",
              partials: bool = False, out_dtype=jnp.float32,
              backend: str = "auto") -> jax.Array:
  """Block-sparse spike propagation (see `propagate_reference`) -> [B, N] in `out_dtype`.

  A single stream (B == 1) goes event-driven, reading only the rows of spiking neurons:
  with "pallas" always (no index needed; `events_variant` picks the kernel, see
  `propagate_events_pallas`); with "xla" when `fanout` (`build_fanout`) and `max_events`
  are given (else dense; on an H100 the XLA event path measured slower than dense XLA,
  docs/KERNELS.md). Every path is differentiable with the same grads.

  partials: where the Pallas "tiles" event kernel runs (B == 1), return its K per-tile
  partial sums [K, N] (their sum over axis 0 is the [1, N] result) for `alif_tick` to add
  up as it reads them; every other path returns [B, N] as usual.
  out_dtype: float32 or bfloat16 (`BrainConfig.current_dtype`; the sums accumulate in
  float32 either way); the K partial sums stay float32.
  backend: the Pallas dense kernel's lowering ("auto", "triton", "mosaic_gpu":
  `pallas.propagate.propagate`, `BrainConfig.propagation_backend`).
  """
  _check(implementation)
  if spk_BxN.shape[0] == 1 and implementation == "pallas" and partials and (
      events_variant == "tiles"):
    return pallas_events.propagate_events_pallas(spk_BxN[0], w_RxKxTxT, col_RxK, gain_RxK,
                                                 variant="tiles", partials=True)
  if spk_BxN.shape[0] == 1 and (implementation == "pallas" or fanout is not None):
    return propagate_events(spk_BxN[0], w_RxKxTxT, col_RxK, gain_RxK, implementation,
                            fanout=fanout, max_events=max_events,
                            events_variant=events_variant)[None].astype(out_dtype)
  return _dense_propagate(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, implementation, out_dtype,
                          backend)


def propagate_events(spk_N: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array,
                     gain_RxK: jax.Array, implementation: Implementation = "xla", *,
                     fanout: tuple[jax.Array, jax.Array] | None = None,
                     max_events: int | None = None, events_variant: str = "tiles") -> jax.Array:
  """Event-driven propagation of one stream's spikes spk_N [N] -> [N] float32.

  "xla" needs `fanout = build_fanout(col_RxK, R)` and an event buffer `max_events`; more
  spikes than that fall back to the dense path. "pallas" needs neither; `events_variant`
  ("tiles", "rows", "atomic") picks its kernel (the xla path ignores it).
  """
  _check(implementation)
  if implementation == "pallas":
    return pallas_events.propagate_events_pallas(spk_N, w_RxKxTxT, col_RxK, gain_RxK,
                                                 variant=events_variant)
  if fanout is None or max_events is None:
    raise ValueError("propagate_events with implementation='xla' needs fanout="
                     "build_fanout(col_RxK, R) and max_events (e.g. 2 x rate x N).")
  return pallas_events.propagate_events(spk_N, w_RxKxTxT, col_RxK, gain_RxK, fanout, max_events)


def tile_outer(pre_BxN: jax.Array, post_BxN: jax.Array, col_RxK: jax.Array, tile: int,
               implementation: Implementation = "xla") -> jax.Array:
  """Block-sparse factorised outer product on the tiles (see `tile_outer_reference`)."""
  _check(implementation)
  if implementation == "pallas":
    return pallas_plasticity.tile_outer(pre_BxN, post_BxN, col_RxK, tile)
  return tile_outer_reference(pre_BxN, post_BxN, col_RxK, tile)


def tile_update(w_RxKxTxT: jax.Array, pre_BxN: jax.Array, post_BxN: jax.Array, col_RxK: jax.Array,
                scale: jax.Array | float, w_min: jax.Array | float, w_max: jax.Array | float,
                implementation: Implementation = "xla") -> jax.Array:
  """w <- clip(w + scale * tile_outer(pre, post), w_min, w_max), fused (see
  `tile_update_reference`); scale is a scalar or [R, K]."""
  _check(implementation)
  if implementation == "pallas":
    return pallas_plasticity.tile_update(w_RxKxTxT, pre_BxN, post_BxN, col_RxK, scale, w_min, w_max)
  return tile_update_reference(w_RxKxTxT, pre_BxN, post_BxN, col_RxK, scale, w_min, w_max)


def synapse_update(w_RxKxTxT: jax.Array, early_RxKxTxT: jax.Array, tag_RxKxTxT: jax.Array,
                   col_RxK: jax.Array, exc_N: jax.Array, f_2xN: jax.Array | None, groups,
                   direct_groups, dw_RxKxTxT: jax.Array | None, tag_thr: jax.Array,
                   capture: jax.Array, seed: jax.Array, rules: SynapseRules,
                   implementation: Implementation = "xla", *, backend: str = "auto"):
  """One token's learning on every synapse: the factorised dW GEMMs, tagging and capture,
  scaling, the direct update, clip, statistics and bf16 rounding in one pass (see
  `pallas.plasticity.synapse_update`) -> (w, early, tag, SynapseStats).
  backend: the Pallas lowering ("auto", "triton", "mosaic_gpu":
  `BrainConfig.synapse_backend`); XLA ignores it."""
  _check(implementation)
  args = (w_RxKxTxT, early_RxKxTxT, tag_RxKxTxT, col_RxK, exc_N, f_2xN, groups, direct_groups,
          dw_RxKxTxT, tag_thr, capture, seed, rules)
  if implementation == "pallas":
    return pallas_plasticity.synapse_update(*args, backend=backend)
  return synapse_update_reference(*args)


def alif_update(v_BxN: jax.Array, i_BxN: jax.Array, a_BxN: jax.Array, tr_BxN: jax.Array,
                cur_BxN: jax.Array, theta_N: jax.Array, *, a_s: float, a_m: float, a_a: float,
                a_t: float, beta: float, threshold: float, width: float,
                implementation: Implementation = "xla"):
  """One adaptive-LIF tick -> (v, i, a, tr, s, x) (see `alif_update_reference`)."""
  _check(implementation)
  kw = dict(a_s=a_s, a_m=a_m, a_a=a_a, a_t=a_t, beta=beta, threshold=threshold, width=width)
  if implementation == "pallas":
    return pallas_neuron.alif_update(v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN, theta_N, **kw)
  return alif_update_reference(v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN, theta_N, **kw)


def alif_tick(v_BxN: jax.Array, i_BxN: jax.Array, a_BxN: jax.Array, tr_BxN: jax.Array,
              prop_BxN: jax.Array, drive_BxN: jax.Array, gate_B: jax.Array,
              vec_6xN: jax.Array | PhaseRows, read_BxN: jax.Array,
              post_BxN: jax.Array | None = None, spikes_BxN: jax.Array | None = None, group_N: jax.Array | None = None, *,
              a_s: float, a_m: float, a_a: float, a_t: float, beta: float, threshold: float,
              width: float, signed_dtype=jnp.bfloat16, n_groups: int = 0, write_s: bool = True,
              implementation: Implementation = "xla"):
  """The whole ALIF tick: input current, neuron update, the signed spikes to propagate
  and the per-token sums in one pass -> (v, i, a, tr, s, q, read[, post, spikes][, counts])
  (see `alif_tick_reference`; counts_BxG: spikes per group of group_N when n_groups > 0;
  write_s=False: s is None, to be rebuilt as q * sign)."""
  _check(implementation)
  kw = dict(a_s=a_s, a_m=a_m, a_a=a_a, a_t=a_t, beta=beta, threshold=threshold, width=width,
            signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s)
  args = (v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN, read_BxN,
          post_BxN, spikes_BxN, group_N)
  if implementation == "pallas":
    return pallas_neuron.alif_tick(*args, **kw)
  return alif_tick_reference(*args, **kw)


def tick_rows(vec_Px6xN: jax.Array, group_N: jax.Array | None = None, n_groups: int = 0, *,
              batch: int, tile: int, implementation: Implementation = "xla",
              fuse: bool = True) -> PhaseRows:
  """Every phase's tick rows ([P, 6, N], `neuron_update.TICK_VEC_ROWS`) laid out once for
  the tick that `propagate_tick` runs with the same batch, implementation and fuse (tile:
  the propagation's T); `.at(phase)` then stands in for its vec_6xN, so a tick does no
  work on its rows. Pallas: padded, with the group row and each kernel block's flags
  (`neuron_update.tick_rows`); XLA: the rows as they are."""
  _check(implementation)
  if implementation == "pallas":
    fused_tile = tile if fuse and pallas_neuron.fused_block_b(batch) else 0
    return pallas_neuron.tick_rows(vec_Px6xN, group_N, n_groups, batch=batch,
                                   fused_tile=fused_tile)
  return PhaseRows(vec_Px6xN.astype(jnp.float32), None, jnp.zeros((), jnp.int32))


def propagate_tick(q_BxN: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array,
                   gain_RxK: jax.Array, v_BxN: jax.Array, i_BxN: jax.Array, a_BxN: jax.Array,
                   tr_BxN: jax.Array, drive_BxN: jax.Array, gate_B: jax.Array,
                   vec_6xN: jax.Array | PhaseRows, read_BxN: jax.Array,
                   post_BxN: jax.Array | None = None, spikes_BxN: jax.Array | None = None, group_N: jax.Array | None = None, *,
                   a_s: float, a_m: float, a_a: float, a_t: float, beta: float,
                   threshold: float, width: float, signed_dtype=jnp.bfloat16, n_groups: int = 0,
                   write_s: bool = True, implementation: Implementation = "xla",
                   fuse: bool = True, events_variant: str = "tiles", out_dtype=jnp.float32,
                   backend: str = "auto"):
  """A whole ALIF tick from the previous tick's signed spikes q: `propagate` then
  `alif_tick` -> alif_tick's results.

  With "pallas", fuse=True and B a multiple of 16 streams, one kernel does both
  (`neuron_update.propagate_tick`: the current is summed and used in float32 registers, so
  out_dtype does not apply). Otherwise the two ops, the propagation's current in out_dtype
  (B = 1 on Pallas: the event kernel's K partial sums, which the tick adds up; B > 1: the
  dense kernel in `backend`'s lowering).
  """
  _check(implementation)
  kw = dict(a_s=a_s, a_m=a_m, a_a=a_a, a_t=a_t, beta=beta, threshold=threshold, width=width,
            signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s)
  tick_args = (v_BxN, i_BxN, a_BxN, tr_BxN, drive_BxN, gate_B, vec_6xN, read_BxN, post_BxN,
               spikes_BxN, group_N)
  b = v_BxN.shape[0]
  if implementation == "pallas" and fuse and pallas_neuron.fused_block_b(b):
    return pallas_neuron.propagate_tick(q_BxN, w_RxKxTxT, col_RxK, gain_RxK, *tick_args, **kw)
  prop_BxN = propagate(q_BxN, w_RxKxTxT, col_RxK, gain_RxK, implementation,
                       events_variant=events_variant, partials=True, out_dtype=out_dtype,
                       backend=backend)
  return alif_tick(*tick_args[:4], prop_BxN, *tick_args[4:], **kw, implementation=implementation)
