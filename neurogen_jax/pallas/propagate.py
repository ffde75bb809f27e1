"""Block-sparse spike propagation: currents = spikes x ELL-of-blocks tiles.

Layout (see `neurogen_jax.ops`): post block r reads K tiles; tile k reads pre block
`col_RxK[r, k]`, and `w_RxKxTxT[r, k, t, u]` is the synapse from pre neuron
`col[r,k]*T + t` to post neuron `r*T + u`.

One program per (batch tile, post block r) loops over the K tiles of r: it loads the
spike block spk[batch tile, col[r,k]*T : +T] (the gather happens in the body: Triton's
index maps cannot read `col`), multiplies it with the T x T tile on the tensor cores with
float32 accumulation, and scales by gain[r, k] (`block_current`, which the fused tick
kernel shares). By default the batch tiles of one r are adjacent in the launch order, so
they share the weight tile through L2 (`tile_order` groups them otherwise). Two lowerings:
- "triton" (`_kernel`, the default): dynamic-slice loads of the spike block from the
  whole spike array, `jnp.dot`; batch tiles of 16-64 rows; int8 spikes are converted in
  the kernel.
- "mosaic_gpu" (`_mosaic_kernel`, Hopper): persistent and warp-specialised: a memory
  warpgroup feeds a TMA ring over k (its index map reads col[r, k] in the kernel) while
  two compute warpgroups run wgmma on 64 rows each of a 128-row batch tile, sharing each
  weight tile. 1.45x faster than Triton on an H200 at B = 256 and 2,048 (docs/KERNELS.md,
  session 20), so "auto" (`choose_backend`) takes it on Hopper from MOSAIC_MIN_B streams.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plmgpu
from jax.experimental.pallas import triton as plgpu

from neurogen_jax.pallas import mosaic, plasticity
from neurogen_jax.pallas.mosaic import is_hopper as _is_hopper
from neurogen_jax.pallas.plasticity import mixed_operand

# Triton's tensor-core dot needs at least 16 rows; the batch is padded up to this.
MIN_BLOCK_B = 16
# Mosaic GPU: one Hopper warpgroup MMA covers 64 rows; two compute warpgroups share each
# weight tile, so a program's batch tile is 128 rows; a ring of 3 (spike block, weight
# tile) stages (3 x 64 KB of shared memory with 128-neuron tiles).
MOSAIC_WG_ROWS = 64
MOSAIC_BLOCK_B = 2 * MOSAIC_WG_ROWS
MOSAIC_STEPS = 3
# Tile sizes the Mosaic GPU kernel takes (the swizzled TMA layout needs rows of >= 128
# bytes; 256-neuron tiles would not fit the ring in shared memory).
MOSAIC_TILES = (64, 128)
MOSAIC_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
BACKENDS = ("auto", "triton", "mosaic_gpu")
# "auto" takes the Mosaic GPU kernel from this many streams on (a Hopper GPU, bfloat16 or
# float16 tiles of 64 or 128 neurons); below, its 128-row batch tile would be mostly padding.
MOSAIC_MIN_B = 128
# Dtypes of the propagated current (accumulated in float32 either way).
CURRENT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def propagate_reference(spk_BxN: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array,
                        gain_RxK: jax.Array) -> jax.Array:
  """cur[b, r*T+u] = sum_k gain[r,k] sum_t spk[b, col[r,k]*T+t] w[r,k,t,u]  ->  [B, N] float32.

  One gather of B x N per tile slot k (never the B x R x K x T tensor at once).
  """
  b = spk_BxN.shape[0]
  r, k_slots, t, _ = w_RxKxTxT.shape
  spk_BxRxT = spk_BxN.reshape(b, r, t).astype(w_RxKxTxT.dtype)
  out_BxRxT = jnp.zeros((b, r, t), jnp.float32)
  for k in range(k_slots):
    pre_BxRxT = spk_BxRxT[:, col_RxK[:, k]]
    w_RxTxT = w_RxKxTxT[:, k]
    part = jnp.einsum("brt,rtu->bru", mixed_operand(pre_BxRxT), mixed_operand(w_RxTxT),
                      preferred_element_type=jnp.float32)
    out_BxRxT = out_BxRxT + part * gain_RxK[None, :, k, None]
  return out_BxRxT.reshape(b, r * t)


def batch_blocking(b: int, block_b: int | None = None) -> tuple[int, int]:
  """(padded batch, batch tile): a power-of-two tile of at least MIN_BLOCK_B rows."""
  if block_b is None:
    block_b = min(64, max(MIN_BLOCK_B, pl.next_power_of_2(b)))
  if block_b < MIN_BLOCK_B or block_b & (block_b - 1):
    raise ValueError(f"block_b must be a power of two >= {MIN_BLOCK_B}, got {block_b}")
  return pl.cdiv(b, block_b) * block_b, block_b


def block_current(col_ref, gain_ref, spk_ref, w_ref, b, r, *, block_b: int) -> jax.Array:
  """Triton body: the current of (batch tile b, post block r), float32 [block_b, T]:
  sum_k gain[r,k] spk[b-tile, col[r,k]-block] @ w[r,k] (w_ref holds post block r's K tiles).
  Shared by `propagate` and the fused tick (`neuron_update.propagate_tick`)."""
  k_slots, tile, _ = w_ref.shape
  rows = pl.ds(pl.multiple_of(b * block_b, block_b), block_b)

  def body(k, acc):
    start = pl.multiple_of(col_ref[r, k] * tile, tile)
    spk = spk_ref[rows, pl.ds(start, tile)].astype(w_ref.dtype)
    part = jnp.dot(spk, w_ref[k], preferred_element_type=jnp.float32)
    return acc + part * gain_ref[r, k]

  return jax.lax.fori_loop(0, k_slots, body, jnp.zeros((block_b, tile), jnp.float32))


def tile_order(g, n_b: int, n_r: int, group: int):
  """Program g of the 1-D launch -> (batch tile b, post block r). Programs run in groups of
  `group` batch tiles: within a group b fastest, then r; the groups one after another. The
  programs running together share the weight tiles of a few r and the spike rows of
  `group` batch tiles through L2 (group = n_b: every batch tile of one r, then the next r)."""
  b_sub, r = g % group, (g // group) % n_r
  return (g // (group * n_r)) * group + b_sub, r


def _kernel(col_ref, gain_ref, spk_ref, w_ref, out_ref, *, block_b: int, order):
  """One (batch tile, post block r): out = sum_k gain[r,k] spk[:, col[r,k]-block] @ w[r,k]."""
  b, r = tile_order(pl.program_id(0), *order)
  out_ref[...] = block_current(col_ref, gain_ref, spk_ref, w_ref, b, r,
                               block_b=block_b).astype(out_ref.dtype)


def _mosaic_kernel(col_gmem, gain_gmem, spk_gmem, w_gmem, out_gmem, *, n_b: int, k_slots: int,
                   tile: int, steps: int, in_transforms, out_transforms, epi_n: int):
  """Mosaic GPU body: one persistent program per SM, three warpgroups. The memory
  warpgroup streams a post block's K (spike block, weight tile) pairs into a `steps`-deep
  shared-memory ring by TMA (the spike block's column read from col in its index map);
  the two compute warpgroups each multiply their 64 rows of the 128-row spike block with
  the shared weight tile (wgmma, float32 accumulator) and add the product times gain[r, k]
  to a register sum, as `block_current` does. Output tiles (batch tile, post block r) are
  walked with the batch tile fastest, so a post block's weights are reused from L2."""
  wg_rows = MOSAIC_WG_ROWS
  cta_rows = 2 * wg_rows

  def pipeline(body, context, r):
    return plmgpu.emit_pipeline_warp_specialized(
        body, grid=(k_slots,), memory_registers=40,
        in_specs=[
            plmgpu.BlockSpec((cta_rows, tile), lambda k: (0, col_gmem[r, k]),
                             transforms=in_transforms, memory_space=plmgpu.SMEM),
            plmgpu.BlockSpec((tile, tile), lambda k: (r * k_slots + k, 0),
                             transforms=in_transforms, memory_space=plmgpu.SMEM),
        ],
        wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=steps, compute_context=context)

  ignore = lambda *_, **__: None

  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(ignore, ignore, 0).get_allocations(spk_gmem, w_gmem),
      out_smem=plmgpu.SMEM((2, wg_rows, epi_n), out_gmem.dtype, transforms=out_transforms),
      collective_axes="wg")
  def _scope(allocations, out_smem):
    wg = jax.lax.axis_index("wg")

    @plmgpu.nd_loop((n_b * (out_gmem.shape[1] // tile),), collective_axes="sm")
    def _tiles(info):
      (lin,) = info.index
      b, r = lin % n_b, lin // n_b

      def context(run_pipeline):
        zero = plmgpu.layout_cast(jnp.zeros((wg_rows, tile), jnp.float32), plmgpu.Layout.WGMMA)
        cur = run_pipeline(zero)
        mosaic.store_rows(cur, out_smem, out_gmem, wg, b * cta_rows + wg * wg_rows, r * tile,
                          epi_n)

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


def _propagate_mosaic(spk, w_RxKxTxT, col_RxK, gain_RxK, out_dtype, interpret):
  """Launch `_mosaic_kernel`; spk is already cast and padded to a multiple of
  MOSAIC_BLOCK_B rows."""
  b_pad, n = spk.shape
  r, k_slots, t, _ = w_RxKxTxT.shape
  itemsize = jnp.dtype(w_RxKxTxT.dtype).itemsize
  epi_n = min(64, t)
  out_itemsize = jnp.dtype(out_dtype).itemsize
  kernel = functools.partial(
      _mosaic_kernel, n_b=b_pad // MOSAIC_BLOCK_B, k_slots=k_slots, tile=t,
      steps=MOSAIC_STEPS, in_transforms=mosaic.swizzled(t * itemsize, itemsize),
      out_transforms=mosaic.swizzled(epi_n * out_itemsize, out_itemsize), epi_n=epi_n)
  return mosaic.persistent_call(kernel, jax.ShapeDtypeStruct((b_pad, n), out_dtype), interpret)(
      col_RxK.astype(jnp.int32), gain_RxK.astype(jnp.float32), spk,
      w_RxKxTxT.reshape(r * k_slots * t, t))


def _mosaic_unfit(w_RxKxTxT: jax.Array, interpret: bool) -> str:
  """Why the Mosaic GPU kernel cannot run these tiles here ("" if it can): it takes
  MOSAIC_TILES-neuron tiles in MOSAIC_DTYPES, compiled on a Hopper GPU only."""
  t, dtype = w_RxKxTxT.shape[-1], jnp.dtype(w_RxKxTxT.dtype)
  if t not in MOSAIC_TILES or dtype not in MOSAIC_DTYPES:
    return (f"the mosaic_gpu backend takes tiles of {MOSAIC_TILES} neurons in bfloat16 or "
            f"float16, got T = {t} in {dtype}")
  if not interpret and not _is_hopper():
    return (f"the mosaic_gpu backend needs a Hopper GPU (wgmma; compute capability 9.x), "
            f"this is {jax.devices()[0].device_kind}")
  return ""


def choose_backend(b: int, w_RxKxTxT: jax.Array, interpret: bool = False) -> str:
  """The lowering "auto" stands for: "mosaic_gpu" on a Hopper GPU (compiled) for B >=
  MOSAIC_MIN_B streams with tiles it takes (`_mosaic_unfit`), else "triton"."""
  if not interpret and b >= MOSAIC_MIN_B and not _mosaic_unfit(w_RxKxTxT, interpret):
    return "mosaic_gpu"
  return "triton"


def _propagate_pallas(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype,
                      interpret, b_group=None):
  if backend == "mosaic_gpu":
    block_b = block_b or MOSAIC_BLOCK_B
    if block_b != MOSAIC_BLOCK_B:
      raise ValueError(f"mosaic_gpu runs {MOSAIC_BLOCK_B}-row batch tiles (two warpgroups of "
                       f"{MOSAIC_WG_ROWS}); got block_b={block_b}. Leave block_b unset.")
  b, n = spk_BxN.shape
  r, k_slots, t, _ = w_RxKxTxT.shape
  b_pad, block_b = batch_blocking(b, block_b)
  # int8 spikes stay int8 for Triton (converted in the kernel): each spike block is
  # re-read by ~K tiles, so one byte per spike halves that traffic.
  keep_int8 = backend == "triton" and spk_BxN.dtype == jnp.int8
  spk = spk_BxN if keep_int8 else spk_BxN.astype(w_RxKxTxT.dtype)
  if b_pad != b:
    spk = jnp.pad(spk, ((0, b_pad - b), (0, 0)))
  if backend == "mosaic_gpu":
    return _propagate_mosaic(spk, w_RxKxTxT, col_RxK, gain_RxK, out_dtype, interpret)[:b]
  full = pl.BlockSpec()  # the whole array
  n_b = b_pad // block_b
  group = n_b if b_group is None else math.gcd(n_b, b_group)
  order = (n_b, r, group)
  out = pl.pallas_call(
      functools.partial(_kernel, block_b=block_b, order=order),
      grid=(n_b * r,),
      in_specs=[
          full,  # col
          full,  # gain
          full,  # spikes: sliced in the body by col
          pl.BlockSpec((None, k_slots, t, t), lambda g: (tile_order(g, *order)[1], 0, 0, 0)),
      ],
      out_specs=pl.BlockSpec((block_b, t), lambda g: tile_order(g, *order)),
      out_shape=jax.ShapeDtypeStruct((b_pad, n), out_dtype),
      compiler_params=plgpu.CompilerParams(num_warps=8 if block_b >= 128 else 4, num_stages=3),
      interpret=interpret,
      name="propagate",
  )(col_RxK.astype(jnp.int32), gain_RxK.astype(jnp.float32), spk, w_RxKxTxT)
  return out[:b]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _propagate(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype, b_group,
               interpret):
  return _propagate_pallas(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype,
                           interpret, b_group)


def _propagate_fwd(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype, b_group,
                   interpret):
  out = _propagate_pallas(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype,
                          interpret, b_group)
  return out, (spk_BxN, w_RxKxTxT, col_RxK, gain_RxK)


def _propagate_bwd(block_b, backend, out_dtype, b_group, interpret, res, g_BxN):
  """d spk through the reference's transpose (a scatter-add); d w and d gain from the
  block-sparse outer product spk^T g on the existing tiles (the plasticity kernel)."""
  del block_b, backend, out_dtype, b_group
  spk_BxN, w_RxKxTxT, col_RxK, gain_RxK = res
  g_BxN = g_BxN.astype(jnp.float32)  # the reference's output dtype
  _, spk_vjp = jax.vjp(lambda s: propagate_reference(s, w_RxKxTxT, col_RxK, gain_RxK), spk_BxN)
  (d_spk,) = spk_vjp(g_BxN)
  t = w_RxKxTxT.shape[-1]
  outer_RxKxTxT = plasticity.tile_outer(spk_BxN.astype(w_RxKxTxT.dtype), g_BxN, col_RxK, t,
                                        interpret=interpret)
  d_w = (outer_RxKxTxT * gain_RxK[:, :, None, None]).astype(w_RxKxTxT.dtype)
  d_gain = jnp.sum(outer_RxKxTxT * w_RxKxTxT.astype(jnp.float32), axis=(2, 3))
  d_gain = d_gain.astype(gain_RxK.dtype)
  return d_spk, d_w, None, d_gain


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


def propagate(spk_BxN: jax.Array, w_RxKxTxT: jax.Array, col_RxK: jax.Array, gain_RxK: jax.Array,
              *, block_b: int | None = None, backend: str = "auto", out_dtype=jnp.float32,
              b_group: int | None = None, interpret: bool = False) -> jax.Array:
  """Pallas block-sparse propagation, the same function as `propagate_reference`.

  spk_BxN: spikes with the Dale sign applied (values in {-1, 0, 1}; int8, bf16 or f32;
    int8 is the fastest at large B).
  w_RxKxTxT: tile magnitudes (bf16); col_RxK: int pre block of each tile; gain_RxK: f32.
  block_b: batch rows per program (triton: power of two >= 16, default min(64, pow2(B));
    mosaic_gpu: MOSAIC_BLOCK_B = 128 only).
  backend: "auto" (default: `choose_backend`), "triton" or "mosaic_gpu" (Hopper only:
    warp-specialised wgmma + TMA, bfloat16/float16 tiles of 64 or 128 neurons; see
    docs/KERNELS.md for the measured times).
  out_dtype: float32 (default) or bfloat16: the sums accumulate in float32 either way;
    bfloat16 halves the bytes the kernel writes and the neuron tick reads.
  b_group: the Triton kernel's launch order (`tile_order`): programs run in groups of this
    many batch tiles (None = all of them: every batch tile of a post block, then the next
    post block). The result is the same; the L2 reuse of weights and spikes is not (on an
    H200 at B = 2,048 no grouping beat the default: docs/KERNELS.md).
  Returns [B, N] in out_dtype. Differentiable (custom_vjp) in spk, w and gain.
  """
  r, k_slots, t, t2 = w_RxKxTxT.shape
  b, n = spk_BxN.shape
  if t != t2 or n != r * t or col_RxK.shape != (r, k_slots) or gain_RxK.shape != (r, k_slots):
    raise ValueError(f"propagate: inconsistent shapes spk {spk_BxN.shape}, w {w_RxKxTxT.shape}, "
                     f"col {col_RxK.shape}, gain {gain_RxK.shape}; expected N = R*T and [R, K].")
  if backend not in BACKENDS:
    raise ValueError(f"propagate: backend must be one of {BACKENDS}, got {backend!r}")
  out_dtype = jnp.dtype(out_dtype)
  if out_dtype not in CURRENT_DTYPES:
    raise ValueError(f"propagate: out_dtype must be float32 or bfloat16, got {out_dtype}")
  if b_group is not None and b_group < 1:
    raise ValueError(f"propagate: b_group must be a positive number of batch tiles, got {b_group}")
  if backend == "auto":
    backend = choose_backend(b, w_RxKxTxT, interpret)
  if backend == "mosaic_gpu" and (why := _mosaic_unfit(w_RxKxTxT, interpret)):
    raise ValueError(f"propagate: {why}; use backend='triton' or 'auto' "
                     f"(BrainConfig.propagation_backend).")
  return _propagate(spk_BxN, w_RxKxTxT, col_RxK, gain_RxK, block_b, backend, out_dtype, b_group,
                    interpret)
