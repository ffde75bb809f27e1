"""Mosaic GPU pieces the Hopper kernels share (`propagate._mosaic_kernel`,
`plasticity._outer_kernel`): the swizzled shared-memory layout that TMA and wgmma take,
the check for a Hopper GPU, the launch of a persistent warp-specialised kernel, and the
epilogue that writes a compute warpgroup's float32 register rows to global memory through
shared memory by TMA."""

from __future__ import annotations

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plmgpu


def swizzled(minor_bytes: int, itemsize: int):
  """The (tiling, swizzle) transforms of shared-memory blocks whose rows hold
  `minor_bytes` bytes of `itemsize`-byte values (the widest swizzle that fits)."""
  swizzle = plmgpu.find_swizzle(minor_bytes * 8)
  return (plmgpu.TilingTransform((8, swizzle // itemsize)), plmgpu.SwizzleTransform(swizzle))


def is_hopper() -> bool:
  """True on a Hopper GPU (compute capability 9.x: wgmma, TMA)."""
  device = jax.devices()[0]
  return device.platform == "gpu" and str(getattr(device, "compute_capability", "")).startswith("9.")


def persistent_call(kernel, out_type: jax.ShapeDtypeStruct, interpret: bool):
  """`kernel` as one program per SM (4 in interpret mode: the loop is the same), each of
  three warpgroups (axis "wg": two compute, one memory) over the grid axis "sm"."""
  return plmgpu.kernel(
      kernel,
      out_type=out_type,
      grid=(4 if interpret else jax.devices()[0].core_count,),
      grid_names=("sm",),
      num_threads=3,
      thread_name="wg",
      compiler_params=plmgpu.CompilerParams(
          lowering_semantics=plmgpu.LoweringSemantics.Warpgroup),
      interpret=plmgpu.InterpretGPUParams() if interpret else False,
  )


def store_rows(rows_f32: jax.Array, out_smem, out_gmem, wg, row0, col0, epi_n: int) -> None:
  """Compute warpgroup `wg` writes its register rows [M, C] (float32, the wgmma layout) to
  out_gmem[row0 : row0 + M, col0 : col0 + C] in out_gmem's dtype, `epi_n` columns at a
  time through its slot out_smem[wg] ([2, M, epi_n], swizzled) by TMA. Waits for the
  warpgroup's previous stores to have left shared memory first, and for these before it
  returns (the slot is reused)."""
  m, c = rows_f32.shape
  plmgpu.wait_smem_to_gmem(0, wait_read_only=True)
  for e in range(c // epi_n):
    out_smem[wg] = rows_f32[:, e * epi_n:(e + 1) * epi_n].astype(out_gmem.dtype)
    plmgpu.commit_smem()
    plmgpu.copy_smem_to_gmem(out_smem.at[wg],
                             out_gmem.at[pl.ds(row0, m), pl.ds(col0 + e * epi_n, epi_n)])
    plmgpu.wait_smem_to_gmem(0, wait_read_only=True)
