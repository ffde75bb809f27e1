"""RECORD (session 21, 2026-12-03): not part of the package. Measured 1.14-1.20x SLOWER than
the two-kernel tick it would replace (docs/KERNELS.md, session 21; fused_*.json here), so it
was not adopted. It ran as neurogen_jax/pallas/fused_mgpu.py; `fused_vs_pair.py` imports
it from this folder. Interpret mode on CPU needs
XLA_FLAGS=--xla_force_host_platform_device_count=4 (with the default single CPU device its
three warpgroup threads starve and the run hangs).

The propagation and the neuron tick in one warp-specialised Mosaic GPU kernel (Hopper).

`neuron_update.propagate_tick`'s kernel for the Mosaic GPU lowering: the persistent
propagation of `propagate._mosaic_kernel` (a memory warpgroup feeding a TMA ring of
(spike block, weight tile) pairs, two compute warpgroups running wgmma on 64 rows each of
a 128-row batch tile) whose epilogue, instead of writing the current, runs the whole
neuron tick on it (`neuron_update._tick_math`): each compute warpgroup loads its rows'
state, sums and per-neuron rows by TMA, `CHUNK` neurons at a time (the first chunk's
loads are issued before the tile products, so they arrive while the tensor cores work),
updates them in float32 registers and stores them back in place by TMA. The current is
never written to memory, and while one program streams its state the others' tensor
cores run: the two kernels' work overlaps across the SMs.

Scope (the wrapper does not check it; the dispatch was never wired): bfloat16 state and sums, bfloat16 tiles of 64 or 128
neurons and bfloat16 signed spikes (the lean training configuration), B a multiple of
128 streams, rows laid out by `neuron_update.tick_rows(fused_tile=T)`, s not written
(write_s=False). The drive is loaded only by blocks whose gain is non-zero in this phase
and the read sum only by blocks that read (both in place: the others keep theirs).
Spikes per group are summed per (post block, group, stream) in the kernel and over the
post blocks by XLA (`[R, G, B]` float32: ~0.1% of the tick's bytes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax._src.state.discharge import run_state
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plmgpu

from neurogen_jax.pallas import mosaic, propagate

# Neurons per epilogue chunk: 6 bfloat16 state/sum arrays + q + drive ([64, 32] each) and
# the float32 read sum per warpgroup fit beside a 2-stage ring of 64 KB stages.
CHUNK = 32
NBUF = 1
STEPS = 2
WG_ROWS = propagate.MOSAIC_WG_ROWS
BLOCK_B = propagate.MOSAIC_BLOCK_B
# The state, the sums, the drive and the signed spikes it takes (the lean configuration).
STATE_DTYPE = jnp.dtype(jnp.bfloat16)
# In-place arrays of the kernel, in this order (the read sum last: it is stored only where
# read). v, i, a, tr, post, spikes are loaded and stored by every block.
_STATE = ("v", "i", "a", "tr", "post", "spikes")


def _swizzle(cols: int, dtype):
  """The TMA tiling and swizzle of rows of `cols` values (the propagation kernel's)."""
  itemsize = jnp.dtype(dtype).itemsize
  return mosaic.swizzled(cols * itemsize, itemsize)


def _kernel(col_gmem, gain_gmem, spk_gmem, w_gmem, drive_gmem, gate_gmem, vec_gmem, flags_gmem,
            phase_gmem, v_gmem, i_gmem, a_gmem, tr_gmem, post_gmem, spk_sum_gmem, read_gmem,
            q_gmem, counts_gmem, *, n_b: int, k_slots: int, tile: int, n_groups: int,
            constants, width: float, chunk: int, nbuf: int, steps: int):
  wg_rows, cta_rows = WG_ROWS, BLOCK_B
  n_chunks = tile // chunk
  bf16 = STATE_DTYPE
  state_gmem = (v_gmem, i_gmem, a_gmem, tr_gmem, post_gmem, spk_sum_gmem)
  in_t = _swizzle(tile, w_gmem.dtype)
  st_t, f32_t = _swizzle(chunk, bf16), _swizzle(chunk, jnp.float32)
  drive_t = _swizzle(chunk, drive_gmem.dtype)
  g_pad = counts_gmem.shape[1]
  n_rows = vec_gmem.shape[1]

  def pipeline(body, context, r):
    return plmgpu.emit_pipeline_warp_specialized(
        body, grid=(k_slots,), memory_registers=40,
        in_specs=[
            plmgpu.BlockSpec((cta_rows, tile), lambda k: (0, col_gmem[r, k]),
                             transforms=in_t, memory_space=plmgpu.SMEM),
            plmgpu.BlockSpec((tile, tile), lambda k: (r * k_slots + k, 0),
                             transforms=in_t, memory_space=plmgpu.SMEM),
        ],
        wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=steps, compute_context=context)

  ignore = lambda *_, **__: None
  # Barriers per (warpgroup, buffer): one that the state arrays' and the rows' copies all
  # arrive at, one for the drive and one for the read sum; then one per warpgroup for its
  # gate rows.
  gate_bar = 2 * nbuf * 2

  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(ignore, ignore, 0).get_allocations(spk_gmem, w_gmem),
      state_smem=plmgpu.SMEM((2, nbuf, len(_STATE), wg_rows, chunk), bf16, transforms=st_t),
      q_smem=plmgpu.SMEM((2, nbuf, wg_rows, chunk), bf16, transforms=st_t),
      drive_smem=plmgpu.SMEM((2, nbuf, wg_rows, chunk), drive_gmem.dtype, transforms=drive_t),
      read_smem=plmgpu.SMEM((2, nbuf, wg_rows, chunk), jnp.float32, transforms=f32_t),
      rows_smem=plmgpu.SMEM((2, nbuf, n_rows, chunk), jnp.float32),
      gate_smem=plmgpu.SMEM((2, wg_rows), jnp.float32),
      counts_smem=plmgpu.SMEM((2, g_pad, wg_rows), jnp.float32),
      state_barriers=plmgpu.Barrier(num_arrivals=len(_STATE) + 1, num_barriers=2 * nbuf),
      barriers=plmgpu.Barrier(num_barriers=gate_bar + 2),
      collective_axes="wg")
  def _scope(allocations, state_smem, q_smem, drive_smem, read_smem, rows_smem, gate_smem,
             counts_smem, state_barriers, barriers):
    wg = jax.lax.axis_index("wg")
    phase = phase_gmem[0]
    state_bar = lambda u: state_barriers.at[wg * nbuf + u]
    bar = lambda u, j: barriers.at[(wg * nbuf + u) * 2 + j]
    drive_j, read_j = 0, 1

    @plmgpu.nd_loop((n_b * (v_gmem.shape[1] // tile),), collective_axes="sm")
    def _tiles(info):
      (lin,) = info.index
      b, r = lin % n_b, lin // n_b
      rows = pl.ds(b * cta_rows + wg * wg_rows, wg_rows)
      driven = flags_gmem[phase, 0, r] > 0
      reading = flags_gmem[phase, 1, r] > 0
      cols_of = lambda e: pl.ds(r * tile + e * chunk, chunk)

      def issue_loads(e):
        u, cols = e % nbuf, cols_of(e)
        for j, ref in enumerate(state_gmem):
          plmgpu.copy_gmem_to_smem(ref.at[rows, cols], state_smem.at[wg, u, j], state_bar(u))
        plmgpu.copy_gmem_to_smem(vec_gmem.at[phase, :, cols], rows_smem.at[wg, u], state_bar(u))

        @pl.when(driven)
        def _():
          plmgpu.copy_gmem_to_smem(drive_gmem.at[rows, cols], drive_smem.at[wg, u],
                                   bar(u, drive_j))

        @pl.when(reading)
        def _():
          plmgpu.copy_gmem_to_smem(read_gmem.at[rows, cols], read_smem.at[wg, u],
                                   bar(u, read_j))

      def context(run_pipeline):
        plmgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last tile's stores
        plmgpu.copy_gmem_to_smem(gate_gmem.at[rows], gate_smem.at[wg], barriers.at[gate_bar + wg])
        issue_loads(0)  # in flight while the tile products run
        zero = plmgpu.layout_cast(jnp.zeros((wg_rows, tile), jnp.float32), plmgpu.Layout.WGMMA)
        cur = run_pipeline(zero)
        plmgpu.barrier_wait(barriers.at[gate_bar + wg])
        gate_b = jax.lax.broadcast_in_dim(gate_smem[wg], (wg_rows, chunk), (0,))
        counts = [None] * n_groups
        for e in range(n_chunks):
          u = e % nbuf
          if nbuf == 2 and e + 1 < n_chunks:
            # The other buffer's last stores (chunk e - 1) have left shared memory: load
            # chunk e + 1 into it while this chunk is computed and stored.
            plmgpu.wait_smem_to_gmem(0, wait_read_only=True)
            issue_loads(e + 1)
          elif nbuf == 1 and e:
            plmgpu.wait_smem_to_gmem(0, wait_read_only=True)
            issue_loads(e)
          plmgpu.barrier_wait(state_bar(u))

          @pl.when(driven)
          def _():
            plmgpu.barrier_wait(bar(u, drive_j))

          @pl.when(reading)
          def _():
            plmgpu.barrier_wait(bar(u, read_j))

          col_b = lambda k: jax.lax.broadcast_in_dim(rows_smem[wg, u, k], (wg_rows, chunk), (1,))
          # The tick rows (neuron_update.TICK_VEC_ROWS, then the groups), per column.
          theta, mask, gain, read_w, learn, sign = (col_b(k) for k in range(6))
          v, i, a, tr, post, spk = (state_smem[wg, u, j].astype(jnp.float32)
                                    for j in range(len(_STATE)))
          # A block that is not driven did not load its drive (its buffer holds whatever
          # came before): its gain is zero, and the select keeps that from a NaN.
          drive = jnp.where(gain != 0.0, drive_smem[wg, u].astype(jnp.float32), 0.0)
          prop = cur[:, e * chunk:(e + 1) * chunk]
          c = constants
          cur_in = prop * jnp.where(mask > 0, gate_b, 1.0) + drive * gain
          i = c.a_s * i + cur_in
          v = c.a_m * v + (1.0 - c.a_m) * i
          thr = c.threshold + c.beta * a + theta
          x = (v - thr) / thr
          s = jnp.where(x > 0, 1.0, 0.0)
          v = v - thr * s
          a = c.a_a * a + s
          tr = c.a_t * tr + s
          psi = jnp.maximum(0.0, 1.0 - jnp.where(x > 0, x, -x) / width) / width
          new = (v, i, a, tr, post + psi * learn, spk + s)
          for j, val in enumerate(new):
            state_smem[wg, u, j] = val.astype(bf16)
          q_smem[wg, u] = (s * sign).astype(bf16)
          read_smem[wg, u] = read_smem[wg, u] + tr * read_w
          if n_groups:
            group = col_b(6)
            for g in range(n_groups):
              part = jnp.sum(jnp.where(group == float(g), s, 0.0), axis=1)
              counts[g] = part if e == 0 else counts[g] + part
          plmgpu.commit_smem()
          cols = cols_of(e)
          for j, ref in enumerate(state_gmem):
            plmgpu.copy_smem_to_gmem(state_smem.at[wg, u, j], ref.at[rows, cols])
          plmgpu.copy_smem_to_gmem(q_smem.at[wg, u], q_gmem.at[rows, cols])

          @pl.when(reading)
          def _():
            plmgpu.copy_smem_to_gmem(read_smem.at[wg, u], read_gmem.at[rows, cols])

        if n_groups:  # rows past the groups: zeros in the sums' layout (a splat of 64
          # values cannot be stored)
          for g in range(g_pad):
            counts_smem[wg, g] = counts[g] if g < n_groups else counts[0] * 0.0
          plmgpu.commit_smem()
          plmgpu.copy_smem_to_gmem(counts_smem.at[wg], counts_gmem.at[r, :, rows])

      def body(idxs, spk_smem, w_smem, cur):
        (k,) = idxs

        def tile_product(acc_ref):
          plmgpu.wgmma(acc_ref, spk_smem.at[pl.ds(wg * wg_rows, wg_rows)], w_smem)
          plmgpu.wgmma_wait(0)
          return acc_ref[...]

        part = pl.run_scoped(tile_product, plmgpu.ACC((wg_rows, tile), jnp.float32))
        return cur + part * gain_gmem[r, k]

      pipeline(body, context, r)(spk_gmem.at[pl.ds(b * cta_rows, cta_rows), :], w_gmem,
                                 allocations=allocations)

  plmgpu.wait_smem_to_gmem(0, wait_read_only=True)


def propagate_tick(q_BxN, w_RxKxTxT, col_RxK, gain_RxK, v_BxN, i_BxN, a_BxN, tr_BxN, drive_BxN,
                   gate_B, rows, read_BxN, post_BxN, spikes_BxN, *, constants, n_groups: int,
                   interpret: bool = False, chunk: int = CHUNK, nbuf: int = NBUF,
                   steps: int = STEPS):
  """The kernel on `neuron_update.propagate_tick`'s checked arguments (rows: `PhaseRows`
  laid out with fused_tile = T) -> (v, i, a, tr, None, q, read, post, spikes[, counts_BxG]),
  the state and sums updated in place."""
  b, n = v_BxN.shape
  r, k_slots, t, _ = w_RxKxTxT.shape
  vec_PxRxN, flags_PxFxNb, phase = rows
  g_pad = max(8, pl.next_power_of_2(max(n_groups, 1)))
  kernel = functools.partial(
      _kernel, n_b=b // BLOCK_B, k_slots=k_slots, tile=t, n_groups=n_groups,
      constants=constants, width=constants.width, chunk=chunk, nbuf=nbuf, steps=steps)
  call = mosaic.persistent_call(
      kernel, (jax.ShapeDtypeStruct((b, n), STATE_DTYPE),
               jax.ShapeDtypeStruct((r, g_pad, b), jnp.float32)), interpret)
  ins = (col_RxK.astype(jnp.int32), gain_RxK.astype(jnp.float32), q_BxN.astype(STATE_DTYPE),
         w_RxKxTxT.reshape(r * k_slots * t, t), drive_BxN, gate_B.astype(jnp.float32), vec_PxRxN,
         flags_PxFxNb, jnp.reshape(phase, (1,)).astype(jnp.int32))

  def stateful(refs):
    # v, i, a, tr, post, spikes, read: updated in place by the kernel (the read sum only
    # where read); q and the counts: its outputs, written into the last two refs.
    *state_refs, q_ref, counts_ref = refs
    q_new, counts = call(*ins, *state_refs)
    q_ref[...] = q_new
    counts_ref[...] = counts

  state = (v_BxN, i_BxN, a_BxN, tr_BxN, post_BxN, spikes_BxN, read_BxN)
  outs = run_state(stateful)(state + (q_BxN.astype(STATE_DTYPE),
                                      jnp.zeros((r, g_pad, b), jnp.float32)))
  v, i, a, tr, post, spikes, read, q, counts = outs
  result = (v, i, a, tr, None, q, read, post, spikes)
  if n_groups:
    result += (jnp.sum(counts, axis=0)[:n_groups].T,)
  return result
