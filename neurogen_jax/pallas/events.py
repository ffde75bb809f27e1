"""Event-driven propagation for one stream (B = 1): read only the rows of neurons that spiked.

At 0.5-5% spike rates a dense pass reads every tile (~164 MB at full size, ~55 us on an
H100) to use a few percent of it. Here a spiking pre neuron j = c*T + t touches only row
t of each tile that reads its block c, T weights per tile.

Two implementations of the same function as `propagate_reference` on [1, N]:
- XLA (`propagate_events`): the spiking neurons are compacted into at most `max_events`
  events; an inverse index (`build_fanout`: for each pre block c the (r, k) tiles that
  read it) lists the tiles each event touches; the rows w[r, k, t, :] are gathered and
  scatter-added into the output. If more than `max_events` neurons spike, `lax.cond`
  falls back to the dense path: spikes are never dropped.
- Pallas (`propagate_events_pallas`): one program per tile (r, k), so that all tiles'
  loads are in flight at once (a loop over the K tiles made the kernel latency-bound:
  32 us at full size); it loads the rows of the pre block col[r, k] with a mask that is
  the block's spikes, so rows of silent neurons are never fetched (and branches over 8-row
  chunks without a spike, `EVENTS_SKIP_SILENT_CHUNKS`), and writes its gain-scaled
  partial sum; XLA adds the K partials (R x K x T floats). It needs neither
  an inverse index nor an event cap, and no compaction pass. Two variants without the
  separate K-sum ("rows": one program per post block; "atomic": atomic adds) are there
  to be measured against it (`variant=`).
Both are differentiable with the dense reference's vjp (propagation is linear in spk).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from neurogen_jax.config import EVENTS_VARIANTS
from neurogen_jax.pallas.propagate import propagate_reference

# Launch knobs of the Pallas kernels, read at each trace (so a sweep can set them): weight
# rows per masked load (a power of two for Triton), warps and pipeline stages per program,
# and whether a chunk of rows with no spike is branched over. Swept on an H200 at full
# size ("tiles", 2% spikes; docs/KERNELS.md): masked loads alone cost ~18 us whatever the
# spikes (21.8 with 4 warps), 18 of it fixed cost of ~5,000 programs' masked code even with
# no spike at all; branching over silent 8-row chunks: 13.1 us at 2%, 9.1 with no spike.
EVENTS_CHUNK = 8
EVENTS_NUM_WARPS = 1
EVENTS_NUM_STAGES = 1
EVENTS_SKIP_SILENT_CHUNKS = True


def build_fanout(col_RxK, num_blocks: int) -> tuple[jax.Array, jax.Array]:
  """Inverse index of the ELL layout: which tiles read each pre block.

  col_RxK: concrete (not traced) int array; built once per connectivity, on the host.
  Returns (rows_CxM, slots_CxM) int32 with C = num_blocks and M = the largest fan-out:
  entry m of block c is tile (rows[c, m], slots[c, m]) with col[rows, slots] == c; unused
  entries hold the sentinel row R (one past the last post block) and slot 0.
  """
  try:
    col = np.asarray(col_RxK).astype(np.int64)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError("build_fanout needs a concrete col_RxK (build it once, outside jit).") from e
  r, k_slots = col.shape
  if col.size and (col.min() < 0 or col.max() >= num_blocks):
    raise ValueError(f"build_fanout: col_RxK has blocks outside [0, {num_blocks}).")
  flat = col.reshape(-1)
  order = np.argsort(flat, kind="stable")
  counts = np.bincount(flat, minlength=num_blocks)
  m = max(1, int(counts.max(initial=0)))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  blocks = flat[order]
  pos = np.arange(flat.size) - starts[blocks]
  rows = np.full((num_blocks, m), r, np.int32)
  slots = np.zeros((num_blocks, m), np.int32)
  rows[blocks, pos] = order // k_slots
  slots[blocks, pos] = order % k_slots
  return jnp.asarray(rows), jnp.asarray(slots)


def _events_xla(spk_N, w_RxKxTxT, gain_RxK, rows_CxM, slots_CxM, max_events):
  """Gather/scatter over at most `max_events` spiking neurons (caller checks the count)."""
  r, k_slots, t, _ = w_RxKxTxT.shape
  n = spk_N.shape[0]
  (idx_E,) = jnp.nonzero(spk_N != 0, size=max_events, fill_value=n)
  valid_E = idx_E < n
  idx_E = jnp.minimum(idx_E, n - 1)
  val_E = jnp.where(valid_E, spk_N[idx_E].astype(jnp.float32), 0.0)
  blk_E, row_E = idx_E // t, idx_E % t
  rows_ExM, slots_ExM = rows_CxM[blk_E], slots_CxM[blk_E]
  live_ExM = rows_ExM < r
  tile_ExM = jnp.minimum(rows_ExM, r - 1) * k_slots + slots_ExM
  w_rows = w_RxKxTxT.reshape(r * k_slots * t, t)[tile_ExM * t + row_E[:, None]]  # [E, M, T]
  coef_ExM = jnp.where(live_ExM, gain_RxK.reshape(-1)[tile_ExM], 0.0) * val_E[:, None]
  contrib_ExMxT = w_rows.astype(jnp.float32) * coef_ExM[:, :, None]
  out_RxT = jnp.zeros((r + 1, t), jnp.float32).at[rows_ExM].add(contrib_ExMxT)
  return out_RxT[:r].reshape(n)


def _dense_vjp(res, g_N):
  spk_N, w_RxKxTxT, col_RxK, gain_RxK = res
  _, vjp = jax.vjp(lambda s, w, gn: propagate_reference(s[None], w, col_RxK, gn)[0],
                   spk_N, w_RxKxTxT, gain_RxK)
  d_spk, d_w, d_gain = vjp(g_N)
  return d_spk, d_w, None, d_gain


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _propagate_events(spk_N, w_RxKxTxT, col_RxK, gain_RxK, rows_CxM, slots_CxM, max_events,
                      dense):
  def events(_):
    return _events_xla(spk_N, w_RxKxTxT, gain_RxK, rows_CxM, slots_CxM, max_events)

  def fallback(_):
    return dense(spk_N[None], w_RxKxTxT, col_RxK, gain_RxK)[0]

  count = jnp.sum(spk_N != 0)
  return jax.lax.cond(count > max_events, fallback, events, None)


def _propagate_events_fwd(spk_N, w_RxKxTxT, col_RxK, gain_RxK, rows_CxM, slots_CxM, max_events,
                          dense):
  out = _propagate_events(spk_N, w_RxKxTxT, col_RxK, gain_RxK, rows_CxM, slots_CxM, max_events,
                          dense)
  return out, (spk_N, w_RxKxTxT, col_RxK, gain_RxK)


def _propagate_events_bwd(max_events, dense, res, g_N):
  del max_events, dense
  return (*_dense_vjp(res, g_N), None, None)


_propagate_events.defvjp(_propagate_events_fwd, _propagate_events_bwd)


def propagate_events(spk_N: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array,
                     gain_RxK: jax.Array, fanout: tuple[jax.Array, jax.Array], max_events: int,
                     dense: Callable[..., jax.Array] = propagate_reference) -> jax.Array:
  """Event-driven `propagate_reference` for one stream -> [N] float32 (XLA gather/scatter).

  spk_N: [N] spikes with Dale sign ({-1, 0, 1}); fanout: `build_fanout(col_RxK, R)`;
  max_events: the event buffer size (static). When more neurons spike, the dense
  `dense(spk_1xN, w, col, gain)` computes the result instead (never drops spikes).
  Gathers max_events * M rows of T weights however few neurons spike: size it a little
  above the expected count (e.g. 2x rate x N).
  """
  rows_CxM, slots_CxM = fanout
  r, _, t, _ = w_RxKxTxT.shape
  if spk_N.shape != (r * t,) or rows_CxM.shape[0] != r:
    raise ValueError(f"propagate_events: spk {spk_N.shape} must be [N] = [{r * t}] and the "
                     f"fanout built for {r} blocks (got {rows_CxM.shape[0]}).")
  return _propagate_events(spk_N, w_RxKxTxT, col_RxK, gain_RxK, rows_CxM, slots_CxM,
                           int(max_events), dense)


def _event_rows(spk_ref, w_ref, row0, base, chunk, scale, emit):
  """emit(scale * sum_t spk[base + t] w[row0 + t, :]) over the spiking t < T, in parts.

  The rows come in through masked loads (rows of silent neurons are never fetched), `chunk`
  rows at a time, unrolled so that their loads can be in flight together. With
  EVENTS_SKIP_SILENT_CHUNKS a chunk whose neurons are all silent is branched over (no
  load, no arithmetic) and each live chunk emits its own [T] part; otherwise the parts are
  summed in registers and emitted once. emit(x) adds x into the output (a store or an
  atomic add).
  """
  tile = w_ref.shape[-1]
  acc = jnp.zeros((tile,), jnp.float32)
  for start in range(0, tile, chunk):
    val = spk_ref[pl.ds(base + start, chunk)].astype(jnp.float32)

    def part(val=val, start=start):
      live = jnp.broadcast_to((val != 0)[:, None], (chunk, tile))
      w_rows = plgpu.load(w_ref.at[pl.ds(row0 + start, chunk), :], mask=live, other=0.0)
      return jnp.sum(w_rows.astype(jnp.float32) * val[:, None], axis=0) * scale

    if EVENTS_SKIP_SILENT_CHUNKS:
      @pl.when(jnp.sum(jnp.abs(val)) > 0)
      def _(part=part):
        emit(part())
    else:
      acc = acc + part()
  if not EVENTS_SKIP_SILENT_CHUNKS:
    emit(acc)


def _add_to(out_ref):
  def emit(x):
    out_ref[...] += x
  return emit


def _tiles_kernel(col_ref, gain_ref, spk_ref, w_ref, out_ref, *, chunk: int):
  """Tile (r, k): out[r, k] = gain[r,k] sum_{t: spk[col[r,k]*T+t] != 0} spk w[r,k,t,:]."""
  r, k = pl.program_id(0), pl.program_id(1)
  tile = w_ref.shape[-1]
  out_ref[...] = jnp.zeros((tile,), jnp.float32)
  _event_rows(spk_ref, w_ref, 0, col_ref[r, k] * tile, chunk, gain_ref[r, k], _add_to(out_ref))


def _rows_kernel(col_ref, gain_ref, spk_ref, w_ref, out_ref, *, chunk: int):
  """Post block r: out[r] = sum_k gain[r,k] (tile (r, k)'s masked row sum); the K tiles
  (rows (r*K + k)*T.. of the whole [R*K*T, T] weight array: no block of K*T rows, which
  Triton would want a power of two) are unrolled in one program, so that all their loads
  can be issued together."""
  r = pl.program_id(0)
  k_slots, tile = col_ref.shape[1], w_ref.shape[-1]
  out_ref[...] = jnp.zeros((tile,), jnp.float32)
  for k in range(k_slots):
    _event_rows(spk_ref, w_ref, (r * k_slots + k) * tile, col_ref[r, k] * tile, chunk,
                gain_ref[r, k], _add_to(out_ref))


def _atomic_kernel(col_ref, gain_ref, spk_ref, w_ref, zeros_ref, out_ref, *, chunk: int):
  """Tile (r, k): atomically adds its gain-scaled partial into out[r] (zeroed beforehand:
  out aliases zeros_ref)."""
  del zeros_ref
  r, k = pl.program_id(0), pl.program_id(1)
  tile = w_ref.shape[-1]
  _event_rows(spk_ref, w_ref, 0, col_ref[r, k] * tile, chunk, gain_ref[r, k],
              lambda x: plgpu.atomic_add(out_ref, pl.ds(0, tile), x))


def _events_pallas(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret, partials=False):
  r, k_slots, t, _ = w_RxKxTxT.shape
  full = pl.BlockSpec()  # the whole array
  args = (col_RxK.astype(jnp.int32), gain_RxK.astype(jnp.float32), spk_N, w_RxKxTxT)
  common = dict(compiler_params=plgpu.CompilerParams(num_warps=EVENTS_NUM_WARPS,
                                                    num_stages=EVENTS_NUM_STAGES),
                interpret=interpret, name=f"propagate_events_{variant}")
  chunk = min(EVENTS_CHUNK, t)
  if variant == "rows":
    out_RxT = pl.pallas_call(
        functools.partial(_rows_kernel, chunk=chunk),
        grid=(r,),
        in_specs=[full, full, full, full],
        out_specs=pl.BlockSpec((None, t), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((r, t), jnp.float32),
        **common,
    )(*args[:3], w_RxKxTxT.reshape(r * k_slots * t, t))
    return out_RxT.reshape(r * t)
  tile_spec = pl.BlockSpec((None, None, t, t), lambda i, j: (i, j, 0, 0))
  if variant == "atomic":
    post_spec = pl.BlockSpec((None, t), lambda i, j: (i, 0))
    out_RxT = pl.pallas_call(
        functools.partial(_atomic_kernel, chunk=chunk),
        grid=(r, k_slots),
        in_specs=[full, full, full, tile_spec, post_spec],
        out_specs=post_spec,
        out_shape=jax.ShapeDtypeStruct((r, t), jnp.float32),
        input_output_aliases={4: 0},
        **common,
    )(*args, jnp.zeros((r, t), jnp.float32))
    return out_RxT.reshape(r * t)
  # Tile (r, k) writes row k of a [K, N] array: the K partial sums of every post neuron,
  # which XLA adds up, or (partials=True) the neuron tick kernel does as it reads them.
  part_KxRxT = pl.pallas_call(
      functools.partial(_tiles_kernel, chunk=chunk),
      grid=(r, k_slots),
      in_specs=[full, full, full, tile_spec],
      out_specs=pl.BlockSpec((None, None, t), lambda i, j: (j, i, 0)),
      out_shape=jax.ShapeDtypeStruct((k_slots, r, t), jnp.float32),
      **common,
  )(*args)
  part_KxN = part_KxRxT.reshape(k_slots, r * t)
  return part_KxN if partials else jnp.sum(part_KxN, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _propagate_events_p(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret, partials):
  return _events_pallas(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret, partials)


def _propagate_events_p_fwd(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret, partials):
  out = _events_pallas(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret, partials)
  return out, (spk_N, w_RxKxTxT, col_RxK, gain_RxK)


def partials_reference(spk_N, w_RxKxTxT, col_RxK, gain_RxK) -> jax.Array:
  """part[k, r*T+u] = gain[r,k] sum_t spk[col[r,k]*T+t] w[r,k,t,u] -> [K, N] float32: the
  per-tile terms whose sum over k is `propagate_reference` of one stream."""
  r, k_slots, t, _ = w_RxKxTxT.shape
  pre_RxKxT = spk_N.reshape(r, t).astype(jnp.float32)[col_RxK]
  part_RxKxT = jnp.einsum("rkt,rktu->rku", pre_RxKxT, w_RxKxTxT.astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST) * gain_RxK[..., None]
  return jnp.transpose(part_RxKxT, (1, 0, 2)).reshape(k_slots, r * t)


def _propagate_events_p_bwd(variant, interpret, partials, res, g):
  """The dense reference's vjp (of the per-tile terms' reference with partials)."""
  del variant, interpret
  if not partials:
    return _dense_vjp(res, g)
  spk_N, w_RxKxTxT, col_RxK, gain_RxK = res
  _, vjp = jax.vjp(lambda s, w, gn: partials_reference(s, w, col_RxK, gn), spk_N, w_RxKxTxT,
                   gain_RxK)
  d_spk, d_w, d_gain = vjp(g)
  return d_spk.astype(spk_N.dtype), d_w.astype(w_RxKxTxT.dtype), None, d_gain


_propagate_events_p.defvjp(_propagate_events_p_fwd, _propagate_events_p_bwd)


def propagate_events_pallas(spk_N: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array,
                            gain_RxK: jax.Array, *, variant: str = "tiles",
                            partials: bool = False, interpret: bool = False) -> jax.Array:
  """Event-driven `propagate_reference` for one stream -> [N] float32 (Pallas).

  partials=True ("tiles" only): return the K per-tile partial sums [K, N] instead of their
  sum (their sum over axis 0 is the [N] result), for a consumer that adds them as it reads
  them (`alif_tick` does): one kernel and one launch gap less per tick.

  Reads, for each tile, only the rows of the pre block's spiking neurons; exact for any
  number of spikes (no event cap, no fallback needed). `variant` (all give the same sums;
  "atomic" in a run-to-run varying order):
  - "tiles": one program per tile (r, k) writes its partial, XLA sums the K partials
    (two kernels; 12.7-13.1 us at full size and 2% spikes on an H200, docs/KERNELS.md).
  - "rows": one program per post block r with its K tiles unrolled, writing out[r]
    directly (one kernel, R programs).
  - "atomic": one program per tile, atomic adds into a zeroed output (one kernel and a
    memset; Triton `atomic_add`).
  """
  r, _, t, _ = w_RxKxTxT.shape
  if spk_N.shape != (r * t,):
    raise ValueError(f"propagate_events_pallas: spk {spk_N.shape} must be [N] = [{r * t}].")
  if variant not in EVENTS_VARIANTS:
    raise ValueError(f"propagate_events_pallas: variant must be one of {EVENTS_VARIANTS}, "
                     f"got {variant!r}")
  if partials and variant != "tiles":
    raise ValueError(f"propagate_events_pallas: partials=True needs variant='tiles' (the "
                     f"others sum over K in the kernel), got {variant!r}.")
  return _propagate_events_p(spk_N, w_RxKxTxT, col_RxK, gain_RxK, variant, interpret,
                             bool(partials))
