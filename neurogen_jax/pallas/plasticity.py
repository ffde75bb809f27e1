"""Block-sparse factorised plasticity on the existing tiles.

dW[r,k,t,u] = sum_b pre[b, col[r,k]*T+t] post[b, r*T+u]: one T x B by B x T GEMM per tile,
never a dense N x N matrix. `tile_update` fuses the weight update into the same pass,
w <- clip(w + scale * dW, w_min, w_max), so the float32 dW never goes to memory.

The Pallas kernel runs one program per (tile slot k, post block r), k fastest so that
the K programs of one r, which share the post block, run side by side; each loops over
the batch in chunks, loading the pre block of `col[r,k]` by a dynamic slice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

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
