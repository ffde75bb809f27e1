"""Block-sparse factorised plasticity on the existing tiles.

dW[r,k,t,u] = sum_b pre[b, col[r,k]*T+t] post[b, r*T+u]: one T x B by B x T GEMM per tile,
never a dense N x N matrix. `tile_update` fuses the weight update into the same pass,
w <- clip(w + scale * dW, w_min, w_max), so the float32 dW never goes to memory.

`synapse_update` is what training runs: a token's whole per-synapse learning (several
factor groups' GEMMs, tagging and capture, scaling, a direct update, clip, statistics,
stochastic rounding to bf16) in one pass; see the section below. On Hopper its "mosaic_gpu"
backend forms the groups' GEMMs first with `grouped_outer`, a warp-specialised Mosaic GPU
kernel, and leaves the Triton kernel the rules.

The Triton kernels run one program per (tile slot k, post block r), k fastest so that
the K programs of one r, which share the post block, run side by side; each loops over
the batch in chunks, loading the pre block of `col[r,k]` by a dynamic slice.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plmgpu
from jax.experimental.pallas import triton as plgpu

from neurogen_jax.pallas import mosaic

def mixed_operand(x: jax.Array) -> jax.Array:
  """Operand for a bf16 x bf16 -> f32 dot: XLA:CPU has no such dot, so upcast there only
  (exact: bf16 values are f32 values)."""
  return x.astype(jnp.float32) if jax.default_backend() == "cpu" else x


# Triton's tensor-core dot needs a contraction of at least 16; the batch is padded to it.
MIN_BLOCK_B = 16


def tile_outer_reference(pre_BxN: jax.Array, post_BxN: jax.Array, col_RxK: jax.Array,
                         tile: int) -> jax.Array:
  """The factorised tile update dW[r,k,t,u] = sum_b pre[b, col[r,k]*T+t] post[b, r*T+u].

  Returns [R, K, T, T] float32; the GEMM runs on existing tiles only (never N x N).
  """
  b, n = pre_BxN.shape
  r = n // tile
  dtype = jnp.promote_types(pre_BxN.dtype, post_BxN.dtype)
  pre_BxRxT = pre_BxN.reshape(b, r, tile).astype(dtype)
  post_BxRxT = post_BxN.reshape(b, r, tile).astype(dtype)
  tiles = [
      jnp.einsum("brt,bru->rtu", mixed_operand(pre_BxRxT[:, col_RxK[:, k]]),
                 mixed_operand(post_BxRxT), preferred_element_type=jnp.float32)
      for k in range(col_RxK.shape[1])
  ]
  return jnp.stack(tiles, axis=1)


def tile_update_reference(w_RxKxTxT: jax.Array, pre_BxN: jax.Array, post_BxN: jax.Array,
                          col_RxK: jax.Array, scale: jax.Array | float, w_min: jax.Array | float,
                          w_max: jax.Array | float) -> jax.Array:
  """clip(w + scale * tile_outer(pre, post), w_min, w_max) in w's dtype.

  scale: a scalar or [R, K] (per-tile learning rate / mask); w_min, w_max: scalars.
  """
  t = w_RxKxTxT.shape[-1]
  dw = tile_outer_reference(pre_BxN, post_BxN, col_RxK, t)
  scale_RxK = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), col_RxK.shape)
  new = w_RxKxTxT.astype(jnp.float32) + scale_RxK[:, :, None, None] * dw
  return jnp.clip(new, w_min, w_max).astype(w_RxKxTxT.dtype)


def _kernel(*refs, block_b: int, num_chunks: int, update: bool):
  """One (k, r) tile: acc = sum over batch chunks of pre_chunk^T @ post_chunk.

  With `update`, refs also hold the tile w, the per-tile scale and (w_min, w_max), and
  the output is the clipped new tile; else it is acc itself.
  """
  if update:
    col_ref, pre_ref, post_ref, scale_ref, bounds_ref, w_ref, out_ref = refs
  else:
    col_ref, pre_ref, post_ref, out_ref = refs
  k, r = pl.program_id(0), pl.program_id(1)
  tile = out_ref.shape[-1]
  w = w_ref[...] if update else None  # issued first: its latency hides behind the GEMM
  pre_cols = pl.ds(pl.multiple_of(col_ref[r, k] * tile, tile), tile)
  post_cols = pl.ds(pl.multiple_of(r * tile, tile), tile)

  def body(i, acc):
    rows = pl.ds(pl.multiple_of(i * block_b, block_b), block_b)
    pre = pre_ref[rows, pre_cols]
    post = post_ref[rows, post_cols]
    return acc + jax.lax.dot_general(pre, post, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, num_chunks, body, jnp.zeros((tile, tile), jnp.float32))
  if update:
    new = w.astype(jnp.float32) + scale_ref[r, k] * acc
    out_ref[...] = jnp.clip(new, bounds_ref[0], bounds_ref[1]).astype(out_ref.dtype)
  else:
    out_ref[...] = acc


def _call(pre_BxN, post_BxN, col_RxK, tile, extra, out_dtype, *, block_b, interpret):
  """Shared launch of `_kernel`; `extra` = (scale_RxK, bounds_2, w) for the fused update."""
  b, n = pre_BxN.shape
  r, k_slots = col_RxK.shape
  if n != r * tile or post_BxN.shape != (b, n):
    raise ValueError(f"tile plasticity: pre {pre_BxN.shape} and post {post_BxN.shape} must both be "
                     f"[B, N] with N = R*T = {r}*{tile}.")
  if block_b is None:
    block_b = min(64, max(MIN_BLOCK_B, pl.next_power_of_2(b)))
  b_pad = pl.cdiv(b, block_b) * block_b
  dtype = jnp.promote_types(pre_BxN.dtype, post_BxN.dtype)
  pre, post = pre_BxN.astype(dtype), post_BxN.astype(dtype)
  if b_pad != b:  # zero rows add nothing to sum_b pre^T post
    pre = jnp.pad(pre, ((0, b_pad - b), (0, 0)))
    post = jnp.pad(post, ((0, b_pad - b), (0, 0)))
  full = pl.BlockSpec()  # the whole array
  tile_spec = pl.BlockSpec((None, None, tile, tile), lambda k, j: (j, k, 0, 0))
  update = bool(extra)
  in_specs = [full, full, full] + ([full, full, tile_spec] if update else [])
  return pl.pallas_call(
      functools.partial(_kernel, block_b=block_b, num_chunks=b_pad // block_b, update=update),
      grid=(k_slots, r),
      in_specs=in_specs,
      out_specs=tile_spec,
      out_shape=jax.ShapeDtypeStruct((r, k_slots, tile, tile), out_dtype),
      input_output_aliases={5: 0} if update else {},
      compiler_params=plgpu.CompilerParams(num_warps=8, num_stages=2),
      interpret=interpret,
      name="tile_update" if update else "tile_outer",
  )(col_RxK.astype(jnp.int32), pre, post, *extra)


def tile_outer(pre_BxN: jax.Array, post_BxN: jax.Array, col_RxK: jax.Array, tile: int, *,
               block_b: int | None = None, interpret: bool = False) -> jax.Array:
  """Pallas `tile_outer_reference`: [R, K, T, T] float32, dW = sum_b pre^T post per tile.

  float32 inputs go through the tensor cores at their default (TF32) precision on GPU;
  bf16 inputs halve the trace traffic (each pre block is re-read by ~K tiles).
  """
  return _call(pre_BxN, post_BxN, col_RxK, tile, (), jnp.float32, block_b=block_b,
               interpret=interpret)


def tile_update(w_RxKxTxT: jax.Array, pre_BxN: jax.Array, post_BxN: jax.Array, col_RxK: jax.Array,
                scale: jax.Array | float, w_min: jax.Array | float, w_max: jax.Array | float, *,
                block_b: int | None = None, interpret: bool = False) -> jax.Array:
  """Pallas `tile_update_reference`: new w (w's dtype) = clip(w + scale * dW, w_min, w_max).

  scale: scalar or [R, K]. The new tiles alias w's buffer (in place when w is donated).
  """
  r, k_slots, tile, _ = w_RxKxTxT.shape
  scale_RxK = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (r, k_slots))
  bounds_2 = jnp.stack([jnp.asarray(w_min, jnp.float32), jnp.asarray(w_max, jnp.float32)])
  return _call(pre_BxN, post_BxN, col_RxK, tile, (scale_RxK, bounds_2, w_RxKxTxT),
               w_RxKxTxT.dtype, block_b=block_b, interpret=interpret)


# ------------------------------------------------------------------ dW on Hopper's tensor cores
#
# `grouped_outer` forms sum_g scale_g[r, k] tile_outer(pre_g, post_g) with a persistent,
# warp-specialised Mosaic GPU kernel (the structure of `propagate._mosaic_kernel`): one
# program per SM walks the tiles (r, k), k fastest (so the programs running together share
# post block r through L2); a memory warpgroup streams the (pre block, post block) pairs of
# 128 batch rows into a shared-memory ring by TMA, the pre block's column read from col[r, k];
# two compute warpgroups each multiply the transposed pre columns of their 64 pre neurons
# with the post block (wgmma) into float32 accumulators held over the tile, one for the
# unscaled groups and one for the scaled group, whose scale[r, k] the epilogue applies.
# On an H200 it runs at 280-345 TFLOP/s, bound by the L2 -> shared memory traffic (each
# 128 x 128 product step loads 64 KB; docs/KERNELS.md, session 22).

OUTER_BLOCK_B = 128  # batch rows per pipeline step (the wgmma contraction)
OUTER_WG_ROWS = 64   # pre neurons (tile rows) per compute warpgroup
OUTER_STEPS = 3      # ring depth: 3 x (2 x 128 x 128 bf16) = 192 KB of shared memory
OUTER_TILES = (2 * OUTER_WG_ROWS,)  # the tile size the kernel takes
OUTER_DTYPES = (jnp.dtype(jnp.bfloat16),)
# "auto" takes the Mosaic GPU kernel when every group has at least this many rows (fewer
# would be mostly padding of the 128-row steps).
OUTER_MIN_B = 128
# ... and at most this many: in the learning step on an H200 it was faster at B = 256
# (-3.1 to -3.6%) and 512 (-1.2%); at 2,048 the GEMM kernel alone (2.9 ms a token) takes
# about what the one Triton kernel does (3.1-3.3), rules included (1,024 not measured;
# docs/KERNELS.md, session 22).
OUTER_MAX_B = 512
SYNAPSE_BACKENDS = ("auto", "triton", "mosaic_gpu")


def _outer_kernel(col_gmem, scale_gmem, pre_gmem, post_gmem, out_gmem, *,
                  k_slots: int, tile: int, steps: int, scaled_steps: int, in_transforms,
                  out_transforms, epi_n: int):
  """Mosaic GPU body: out[(r*K + k)*T + t, u] = sum_b pre[b, col[r,k]*T + t] post[b, r*T + u]
  over the stacked rows b, those of the first `scaled_steps` 128-row steps (the scaled
  group) times scale[r, k].

  Each compute warpgroup keeps two wgmma accumulators for the whole tile (the unscaled
  groups' and the scaled group's), so consecutive steps' wgmmas overlap (one in flight:
  each ring slot is released a step late); the scale is applied once, in the epilogue."""
  wg_rows, block_b = OUTER_WG_ROWS, OUTER_BLOCK_B
  n_steps = pre_gmem.shape[0] // block_b

  def pipeline(body, context, r, k):
    spec = lambda index_map: plmgpu.BlockSpec((block_b, tile), index_map,
                                              transforms=in_transforms, delay_release=1,
                                              memory_space=plmgpu.SMEM)
    return plmgpu.emit_pipeline_warp_specialized(
        body, grid=(n_steps,), memory_registers=40,
        in_specs=[spec(lambda s: (s, col_gmem[r, k])), spec(lambda s: (s, r))],
        wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=steps, compute_context=context)

  ignore = lambda *_, **__: None

  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(ignore, ignore, 0, 0).get_allocations(pre_gmem, post_gmem),
      out_smem=plmgpu.SMEM((2, wg_rows, epi_n), out_gmem.dtype, transforms=out_transforms),
      collective_axes="wg")
  def _scope(allocations, out_smem):
    wg = jax.lax.axis_index("wg")

    @plmgpu.nd_loop((col_gmem.shape[0] * k_slots,), collective_axes="sm")
    def _tiles(info):
      (lin,) = info.index
      r, k = lin // k_slots, lin % k_slots

      def context(run_pipeline):
        def with_accs(acc_u, acc_s):
          run_pipeline((acc_u, acc_s))
          plmgpu.wgmma_wait(0)  # the last step's product (the body leaves one in flight)
          dw = acc_u[...]
          if scaled_steps:
            dw = dw + acc_s[...] * scale_gmem[r, k]
          mosaic.store_rows(dw, out_smem, out_gmem, wg, lin * tile + wg * wg_rows, 0, epi_n)

        acc = plmgpu.ACC((wg_rows, tile), jnp.float32)
        pl.run_scoped(with_accs, acc, acc if scaled_steps else None)

      def body(idxs, pre_smem, post_smem, accs):
        (s,) = idxs

        def product(acc_ref):
          for w in range(2):  # static column slices: this warpgroup's 64 pre neurons
            @pl.when(wg == w)
            def _():
              pre_t = pre_smem.at[:, pl.ds(w * wg_rows, wg_rows)].transpose((1, 0))
              plmgpu.wgmma(acc_ref, pre_t, post_smem)

        acc_u, acc_s = accs
        if scaled_steps == 0:
          product(acc_u)
        elif scaled_steps == n_steps:
          product(acc_s)
        else:
          pl.when(s < scaled_steps)(lambda: product(acc_s))
          pl.when(s >= scaled_steps)(lambda: product(acc_u))
        plmgpu.wgmma_wait(1)
        return accs

      pipeline(body, context, r, k)(pre_gmem, post_gmem, allocations=allocations)


def _outer_unfit(groups, tile: int, interpret: bool) -> str:
  """Why the Mosaic GPU kernel cannot form these groups' dW here ("" if it can)."""
  if tile not in OUTER_TILES:
    return f"the mosaic_gpu synapse backend takes tiles of {OUTER_TILES} neurons, got T = {tile}"
  dtypes = {jnp.dtype(x.dtype) for pre, post, _ in groups for x in (pre, post)}
  if not dtypes <= set(OUTER_DTYPES):
    return (f"the mosaic_gpu synapse backend takes bfloat16 factors, got "
            f"{sorted(str(d) for d in dtypes)}")
  if not interpret and not mosaic.is_hopper():
    return (f"the mosaic_gpu synapse backend needs a Hopper GPU (wgmma; compute capability "
            f"9.x), this is {jax.devices()[0].device_kind}")
  return ""


def grouped_outer(groups, col_RxK: jax.Array, tile: int, *, interpret: bool = False) -> jax.Array:
  """sum over groups (pre_BxN, post_BxN, scale_RxK or None) of scale[r, k] *
  tile_outer(pre, post) -> [R, K, T, T] float32, on Hopper's tensor cores (Mosaic GPU;
  `_grouped_outer` is the same in jnp). bfloat16 factors, T = 128; each group's rows are
  padded to a multiple of 128 (zero rows add nothing) and the groups stacked: the unscaled
  groups (scale None) and one scaled group in one kernel call, each further scaled group
  in a call of its own (training has one: e-prop's)."""
  r, k_slots = col_RxK.shape
  if not groups:
    raise ValueError("grouped_outer: no factor groups")
  if why := _outer_unfit(groups, tile, interpret):
    raise ValueError(f"grouped_outer: {why}; use synapse backend 'triton' or 'auto' "
                     f"(BrainConfig.synapse_backend).")
  for pre, post, _ in groups:
    if pre.ndim != 2 or pre.shape[1] != r * tile or post.shape != pre.shape:
      raise ValueError(f"grouped_outer: factors {pre.shape}, {post.shape} must be [B, {r * tile}]")
  scaled = [g for g in groups if g[2] is not None]
  unscaled = [g for g in groups if g[2] is None]
  calls = [(scaled[:1], unscaled)] + [([g], []) for g in scaled[1:]]
  total = None
  for scaled_part, unscaled_part in calls:
    out = _outer_call(scaled_part[0] if scaled_part else None, unscaled_part, col_RxK, tile,
                      interpret)
    total = out if total is None else total + out
  return total.reshape(r, k_slots, tile, tile)


def _outer_call(scaled, unscaled, col_RxK, tile, interpret):
  """One `_outer_kernel` launch: the scaled group's rows first (`scaled` = (pre, post,
  scale_RxK) or None), then the unscaled groups'; -> [R*K*T, T] float32."""
  r, k_slots = col_RxK.shape
  pad = lambda x: jnp.pad(x, ((0, -x.shape[0] % OUTER_BLOCK_B), (0, 0)))
  parts = ([scaled] if scaled is not None else []) + list(unscaled)
  pre_SBxN = jnp.concatenate([pad(pre) for pre, _, _ in parts])
  post_SBxN = jnp.concatenate([pad(post) for _, post, _ in parts])
  if pre_SBxN.shape[0] == OUTER_BLOCK_B:
    # A second, zero step: with one step, emit_pipeline_warp_specialized shrinks its ring to
    # one slot, which a slot released a step late (delay_release=1) cannot use (jax 0.11.2
    # checks the ring depth before shrinking it; measured wrong sums in interpret mode).
    pre_SBxN, post_SBxN = (jnp.pad(x, ((0, OUTER_BLOCK_B), (0, 0))) for x in (pre_SBxN, post_SBxN))
  scaled_steps = 0 if scaled is None else pl.cdiv(scaled[0].shape[0], OUTER_BLOCK_B)
  scale_RxK = jnp.broadcast_to(jnp.asarray(1.0 if scaled is None else scaled[2], jnp.float32),
                               (r, k_slots))
  itemsize = jnp.dtype(OUTER_DTYPES[0]).itemsize
  epi_n = 64
  kernel = functools.partial(
      _outer_kernel, k_slots=k_slots, tile=tile, scaled_steps=scaled_steps, steps=OUTER_STEPS,
      in_transforms=mosaic.swizzled(tile * itemsize, itemsize),
      out_transforms=mosaic.swizzled(epi_n * 4, 4), epi_n=epi_n)
  out_type = jax.ShapeDtypeStruct((r * k_slots * tile, tile), jnp.float32)
  return mosaic.persistent_call(kernel, out_type, interpret)(
      col_RxK.astype(jnp.int32), scale_RxK, pre_SBxN, post_SBxN)


def choose_synapse_backend(groups, tile: int, interpret: bool = False) -> str:
  """The lowering "auto" stands for: "mosaic_gpu" (the groups' GEMMs by `grouped_outer`,
  the rules by the Triton kernel) on a Hopper GPU, compiled, when the factors and tile fit
  (`_outer_unfit`) and every group has OUTER_MIN_B to OUTER_MAX_B rows; else "triton"
  (one kernel)."""
  rows = [pre.shape[0] for pre, _, _ in groups]
  if (not interpret and rows and min(rows) >= OUTER_MIN_B and max(rows) <= OUTER_MAX_B
      and not _outer_unfit(groups, tile, interpret)):
    return "mosaic_gpu"
  return "triton"


# ------------------------------------------------------------------ the whole per-token update
#
# `synapse_update` applies one token's learning to every synapse in one pass over the tiles:
# the factorised GEMMs (in registers), synaptic tagging and capture on the early component,
# synaptic scaling, the direct (replay) update, the clip, the statistics the next token needs
# and the stochastic rounding back to bf16. Per synapse it reads w, early and tag and writes
# them back (12 bytes in bf16), instead of a float32 dW and its separate passes.


# Pre-synaptic rows per program and warps of `synapse_update` (module knobs for sweeps).
# Measured on an H200 (B = 256, docs/BENCHMARKS.md): 128 rows, 8 warps, 4 stages.
SYNAPSE_BLOCK_T = 128
SYNAPSE_NUM_WARPS = 8
SYNAPSE_NUM_STAGES = 4
# ... and for the rules alone (dW given, no factor groups: the mosaic_gpu backend): 32 rows,
# 4 warps (H200, B = 256: 534 us against 739 with 128 rows and 8 warps).
RULES_BLOCK_T = 32
RULES_NUM_WARPS = 4


class SynapseRules(NamedTuple):
  """The static switches and rates of `synapse_update` (hashable: a jit static)."""

  tagging: bool = True        # early/tag components exist: updates land in `early`
  scaling: bool = True        # multiply by the per-post-neuron factors f_2xN
  stochastic_round: bool = True  # w is bf16: round the new weights stochastically
  early_decay: float = 0.995
  tag_decay: float = 0.8
  w_max: float = 1.0


class SynapseStats(NamedTuple):
  """Sums over each tile's pre-synaptic rows, [R, K, H, T] float32 (H = T / block_t row
  chunks), one entry per post neuron of the tile: the new weights from excitatory and from
  inhibitory pre neurons, |dW|, tags above 0.5, and |captured| weight."""

  exc: jax.Array
  inh: jax.Array
  abs_dw: jax.Array
  tags: jax.Array
  captured: jax.Array


_GOLDEN = -1640531527  # 0x9E3779B9 as int32


def hash32(x: jax.Array) -> jax.Array:
  """A 32-bit integer hash (Wellons' lowbias32) on int32, wrapping arithmetic: the random
  bits of the stochastic rounding, the same in XLA and inside the kernel."""
  srl = jax.lax.shift_right_logical
  x = x ^ srl(x, jnp.int32(16))
  x = x * jnp.int32(0x7FEB352D)
  x = x ^ srl(x, jnp.int32(15))
  x = x * jnp.int32(-2073254261)  # 0x846CA68B
  return x ^ srl(x, jnp.int32(16))


def round_bf16_hashed(x_f32: jax.Array, index: jax.Array, seed: jax.Array) -> jax.Array:
  """f32 -> bf16, rounding up with probability equal to the distance (unbiased), the bits
  from `hash32(index * golden + seed)`; `index` is each element's flat index (int32)."""
  noise = hash32(index * jnp.int32(_GOLDEN) + seed) & jnp.int32(0xFFFF)
  bits = jax.lax.bitcast_convert_type(x_f32, jnp.int32)
  rounded = (bits + noise) & jnp.int32(-65536)  # 0xFFFF0000
  return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)


def _apply_rules(w, early, tag, dw, direct, exc_t, f_exc_u, f_inh_u, tag_thr, capture,
                 rules: SynapseRules, clip: bool = True):
  """The elementwise rules on one block of synapses (rows: pre neurons, columns: post).

  Returns (new w as float32 before rounding, new early, new tag, captured weight); with
  clip=False the direct update and the clip are left to the caller."""
  tiles = w.astype(jnp.float32)
  captured = None
  if rules.tagging:
    early_f = early.astype(jnp.float32)
    new_early = rules.early_decay * early_f + dw
    tiles = tiles - early_f + new_early
    strong = (jnp.abs(dw) > tag_thr).astype(jnp.float32)
    tag_f = jnp.maximum(tag.astype(jnp.float32) * rules.tag_decay, strong)
    captured = capture * tag_f * new_early
    early, tag = new_early - captured, tag_f  # captured weight moves to the late part
  else:
    tiles = tiles + dw
  if rules.scaling:
    tiles = tiles * jnp.where(exc_t > 0, f_exc_u, f_inh_u)
  if direct is not None:
    tiles = tiles + direct
  if clip:
    tiles = jnp.clip(tiles, 0.0, rules.w_max)
  return tiles, early, tag, captured


def _grouped_outer(groups, col_RxK, tile):
  """sum_g scale_g[r, k] * tile_outer(pre_g, post_g) -> [R, K, T, T] float32 (None if no
  group; a scale of None is 1)."""
  total = None
  for pre, post, scale_RxK in groups:
    d = tile_outer_reference(pre, post, col_RxK, tile)
    if scale_RxK is not None:
      d = jnp.asarray(scale_RxK, jnp.float32)[:, :, None, None] * d
    total = d if total is None else total + d
  return total


def synapse_update_reference(w_RxKxTxT, early_RxKxTxT, tag_RxKxTxT, col_RxK, exc_N, f_2xN,
                             groups, direct_groups, dw_RxKxTxT, tag_thr, capture, seed,
                             rules: SynapseRules, block_t: int | None = None):
  """One token's update of every synapse, pure jnp (see `synapse_update`)."""
  r, k, t, _ = w_RxKxTxT.shape
  h = t // (block_t or t)
  dw = _grouped_outer(groups, col_RxK, t)
  if dw_RxKxTxT is not None:
    dw = dw_RxKxTxT if dw is None else dw + dw_RxKxTxT
  if dw is None:
    dw = jnp.zeros(w_RxKxTxT.shape, jnp.float32)
  direct = _grouped_outer(direct_groups, col_RxK, t)
  exc_t = exc_N.reshape(-1, t)[col_RxK][..., None]  # [R, K, T, 1]: pre rows
  f_exc_u = f_inh_u = None
  if rules.scaling:
    f_exc_u = f_2xN[0].reshape(r, 1, 1, t)
    f_inh_u = f_2xN[1].reshape(r, 1, 1, t)
  tiles, early, tag, captured = _apply_rules(w_RxKxTxT, early_RxKxTxT, tag_RxKxTxT, dw, direct,
                                             exc_t, f_exc_u, f_inh_u, tag_thr, capture, rules)
  chunked = lambda x: x.reshape(r, k, h, t // h, t).sum(axis=3)
  zero = jnp.zeros((r, k, h, t), jnp.float32)
  stats = SynapseStats(
      exc=chunked(jnp.where(exc_t > 0, tiles, 0.0)), inh=chunked(jnp.where(exc_t > 0, 0.0, tiles)),
      abs_dw=chunked(jnp.abs(dw)),
      tags=chunked((tag > 0.5).astype(jnp.float32)) if rules.tagging else zero,
      captured=chunked(jnp.abs(captured)) if rules.tagging else zero)
  if rules.stochastic_round:
    index = jnp.arange(tiles.size, dtype=jnp.int32).reshape(tiles.shape)
    new_w = round_bf16_hashed(tiles, index, jnp.asarray(seed, jnp.int32))
  else:
    new_w = tiles.astype(w_RxKxTxT.dtype)
  if rules.tagging:
    early, tag = early.astype(early_RxKxTxT.dtype), tag.astype(tag_RxKxTxT.dtype)
  return new_w, early, tag, stats


def _synapse_kernel(*refs, rules: SynapseRules, groups: tuple, num_direct: int, has_dw: bool,
                    block_t: int, k_slots: int):
  """One (k, r, h) block: block_t pre rows x T post columns of tile (r, k).

  refs: col, exc, [f_2xN], scalars (tag_thr, capture), seed, then per group (pre, post[,
  scale]) for the dW groups and the direct groups, [dw], w, [early, tag]; outputs: w,
  [early, tag], the five statistics. `groups` holds (block_b, num_chunks, scaled) per group.

  Register budget: one float32 accumulator per phase. dW accumulates the scaled groups
  (each times its per-tile scale, a second accumulator only while one is summed) and then
  the unscaled ones on top; w, early and tag are loaded only after the GEMMs, and the
  direct groups' accumulator lives only next to the new weights.
  """
  it = iter(refs)
  col_ref, exc_ref = next(it), next(it)
  f_ref = next(it) if rules.scaling else None
  scal_ref, seed_ref = next(it), next(it)
  group_refs = [(next(it), next(it), next(it) if scaled else None) for _, _, scaled in groups]
  dw_ref = next(it) if has_dw else None
  w_ref = next(it)
  early_ref, tag_ref = (next(it), next(it)) if rules.tagging else (None, None)
  w_out = next(it)
  early_out, tag_out = (next(it), next(it)) if rules.tagging else (None, None)
  stat_refs = [next(it) for _ in SynapseStats._fields]

  k, r, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  tile = w_out.shape[-1]
  pre_start = col_ref[r, k] * tile + h * block_t
  pre_cols = pl.ds(pl.multiple_of(pre_start, block_t), block_t)
  post_cols = pl.ds(pl.multiple_of(r * tile, tile), tile)

  def accumulate(g, acc):
    """acc + sum over the batch chunks of pre_chunk^T @ post_chunk for group g."""
    (pre_ref, post_ref, _), (block_b, num_chunks, _) = group_refs[g], groups[g]

    def body(i, acc):
      rows = pl.ds(pl.multiple_of(i * block_b, block_b), block_b)
      return acc + jax.lax.dot_general(pre_ref[rows, pre_cols], post_ref[rows, post_cols],
                                       (((0,), (0,)), ((), ())),
                                       preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, num_chunks, body, acc)

  def sum_groups(gs, acc):
    zeros = jnp.zeros((block_t, tile), jnp.float32)
    for g in [g for g in gs if groups[g][2]]:  # scaled groups first
      scale = group_refs[g][2][r, k]
      acc = scale * accumulate(g, zeros) if acc is None else acc + scale * accumulate(g, zeros)
    for g in [g for g in gs if not groups[g][2]]:
      acc = accumulate(g, zeros if acc is None else acc)
    return acc

  num_dw = len(groups) - num_direct
  dw = sum_groups(range(num_dw), dw_ref[...] if has_dw else None)
  if dw is None:
    dw = jnp.zeros((block_t, tile), jnp.float32)
  w = w_ref[...]
  early = early_ref[...] if rules.tagging else None
  tag = tag_ref[...] if rules.tagging else None
  exc_t = exc_ref[pre_cols][:, None]
  f_exc_u = f_ref[0, post_cols][None, :] if rules.scaling else None
  f_inh_u = f_ref[1, post_cols][None, :] if rules.scaling else None
  # The rules before the direct update and the clip, so that dW is dead before the direct
  # groups' accumulator is live.
  tiles, early, tag, captured = _apply_rules(w, early, tag, dw, None, exc_t, f_exc_u, f_inh_u,
                                             scal_ref[0], scal_ref[1], rules, clip=False)
  stat_refs[2][...] = jnp.sum(jnp.abs(dw), axis=0)
  if rules.tagging:
    stat_refs[3][...] = jnp.sum((tag > 0.5).astype(jnp.float32), axis=0)
    stat_refs[4][...] = jnp.sum(jnp.abs(captured), axis=0)
    early_out[...] = early.astype(early_out.dtype)
    tag_out[...] = tag.astype(tag_out.dtype)
  else:
    stat_refs[3][...] = jnp.zeros((tile,), jnp.float32)
    stat_refs[4][...] = jnp.zeros((tile,), jnp.float32)
  if num_direct:
    tiles = sum_groups(range(num_dw, len(groups)), None) + tiles
  tiles = jnp.clip(tiles, 0.0, rules.w_max)
  is_exc = exc_t > 0
  stat_refs[0][...] = jnp.sum(jnp.where(is_exc, tiles, 0.0), axis=0)
  stat_refs[1][...] = jnp.sum(jnp.where(is_exc, 0.0, tiles), axis=0)
  if rules.stochastic_round:
    rows = jax.lax.broadcasted_iota(jnp.int32, (block_t, tile), 0) + h * block_t
    cols = jax.lax.broadcasted_iota(jnp.int32, (block_t, tile), 1)
    index = ((r * k_slots + k) * tile + rows) * tile + cols
    w_out[...] = round_bf16_hashed(tiles, index, seed_ref[0])
  else:
    w_out[...] = tiles.astype(w_out.dtype)


def synapse_update(w_RxKxTxT, early_RxKxTxT, tag_RxKxTxT, col_RxK, exc_N, f_2xN, groups,
                   direct_groups, dw_RxKxTxT, tag_thr, capture, seed, rules: SynapseRules, *,
                   block_t: int | None = None, num_warps: int | None = None,
                   backend: str = "auto", interpret: bool = False):
  """One token's learning on every synapse in one pass (Pallas; `synapse_update_reference`
  is the same in jnp).

  dW = sum over `groups` (pre_BxN, post_BxN, scale_RxK) of scale[r, k] * tile_outer(pre,
  post) (scale None: 1, the cheapest in the kernel, which keeps one accumulator for the
  unscaled groups and the first scaled one) (+ `dw_RxKxTxT` when given: a dW already summed, e.g. across devices); with
  `rules.tagging` it lands in the early component (early <- early_decay * early + dW; the
  tag is set where |dW| > tag_thr and decays by tag_decay; a fraction `capture` of the
  tagged early weight moves to the late part), else in w directly; `rules.scaling`
  multiplies each synapse by f_2xN[0 or 1, post] (pre excitatory or not, exc_N > 0);
  `direct_groups` (same form) are added to w after that, then w is clipped to [0, w_max]
  and, with `rules.stochastic_round`, rounded to bf16 with `hash32` bits from `seed`.

  backend: "triton" runs all of it in one Triton kernel; "mosaic_gpu" (Hopper, bfloat16
  factors, T = 128) forms the groups' dW first with `grouped_outer` (warp-specialised
  wgmma, float32 dW in HBM) and gives it to the Triton kernel as `dw_RxKxTxT` for the
  rules, launched with RULES_BLOCK_T rows and RULES_NUM_WARPS warps unless block_t /
  num_warps say otherwise; "auto" (default) is `choose_synapse_backend`. The same function
  either way (the float32 sums in another order).

  Returns (w, early, tag, SynapseStats); w, early and tag alias their inputs' buffers.
  tag_thr, capture: float32 scalars; seed: int32 scalar. early/tag may be empty arrays
  when `rules.tagging` is off.
  """
  r, k_slots, tile, _ = w_RxKxTxT.shape
  if backend not in SYNAPSE_BACKENDS:
    raise ValueError(f"synapse_update: backend must be one of {SYNAPSE_BACKENDS}, got {backend!r}")
  if backend == "auto":
    backend = choose_synapse_backend(groups, tile, interpret)
  if backend == "mosaic_gpu" and groups:
    dw = grouped_outer(groups, col_RxK, tile, interpret=interpret)
    dw_RxKxTxT = dw if dw_RxKxTxT is None else dw + dw_RxKxTxT.astype(jnp.float32)
    groups = ()
    block_t, num_warps = block_t or RULES_BLOCK_T, num_warps or RULES_NUM_WARPS
  n = r * tile
  block_t = block_t or min(tile, SYNAPSE_BLOCK_T)
  num_warps = num_warps or SYNAPSE_NUM_WARPS
  if tile % block_t or block_t < 16:
    raise ValueError(f"synapse_update: block_t={block_t} must divide the tile {tile} and be >= 16")
  h = tile // block_t
  if exc_N.shape != (n,) or col_RxK.shape != (r, k_slots):
    raise ValueError(f"synapse_update: exc_N {exc_N.shape} must be [{n}] and col_RxK "
                     f"{col_RxK.shape} [{r}, {k_slots}] for tiles {w_RxKxTxT.shape}")
  full = pl.BlockSpec()
  block = pl.BlockSpec((None, None, block_t, tile), lambda k, j, i: (j, k, i, 0))
  stat = pl.BlockSpec((None, None, None, tile), lambda k, j, i: (j, k, i, 0))
  operands, in_specs, group_meta = [], [], []
  for pre, post, scale in tuple(groups) + tuple(direct_groups):
    b = pre.shape[0]
    if pre.shape != (b, n) or post.shape != (b, n):
      raise ValueError(f"synapse_update: factors {pre.shape}, {post.shape} must be [B, {n}]")
    block_b = min(64, max(MIN_BLOCK_B, pl.next_power_of_2(b)))
    b_pad = pl.cdiv(b, block_b) * block_b
    dtype = jnp.promote_types(pre.dtype, post.dtype)
    pre, post = pre.astype(dtype), post.astype(dtype)
    if b_pad != b:  # zero rows add nothing
      pre = jnp.pad(pre, ((0, b_pad - b), (0, 0)))
      post = jnp.pad(post, ((0, b_pad - b), (0, 0)))
    operands += [pre, post]
    if scale is not None:
      operands.append(jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (r, k_slots)))
    in_specs += [full] * (3 if scale is not None else 2)
    group_meta.append((block_b, b_pad // block_b, scale is not None))
  head = [col_RxK.astype(jnp.int32), exc_N.astype(jnp.float32)]
  if rules.scaling:
    head.append(f_2xN.astype(jnp.float32))
  head += [jnp.stack([jnp.asarray(tag_thr, jnp.float32), jnp.asarray(capture, jnp.float32)]),
           jnp.asarray(seed, jnp.int32).reshape(1)]
  operands = head + operands
  in_specs = [full] * len(head) + in_specs
  if dw_RxKxTxT is not None:
    operands.append(dw_RxKxTxT.astype(jnp.float32))
    in_specs.append(block)
  first_state = len(operands)
  state = [w_RxKxTxT] + ([early_RxKxTxT, tag_RxKxTxT] if rules.tagging else [])
  operands += state
  in_specs += [block] * len(state)
  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state]
  out_shape += [jax.ShapeDtypeStruct((r, k_slots, h, tile), jnp.float32)] * len(SynapseStats._fields)
  kernel = functools.partial(_synapse_kernel, rules=rules, groups=tuple(group_meta),
                             num_direct=len(direct_groups), has_dw=dw_RxKxTxT is not None,
                             block_t=block_t, k_slots=k_slots)
  outs = pl.pallas_call(
      kernel,
      grid=(k_slots, r, h),
      in_specs=in_specs,
      out_specs=[block] * len(state) + [stat] * len(SynapseStats._fields),
      out_shape=out_shape,
      input_output_aliases={first_state + i: i for i in range(len(state))},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=SYNAPSE_NUM_STAGES),
      interpret=interpret,
      name="synapse_update",
  )(*operands)
  new_w = outs[0]
  early, tag = (outs[1], outs[2]) if rules.tagging else (early_RxKxTxT, tag_RxKxTxT)
  return new_w, early, tag, SynapseStats(*outs[len(state):])
