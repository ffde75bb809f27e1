"""Fused adaptive-LIF tick: every state array read once and written once.

i <- a_s i + cur;  v <- a_m v + (1 - a_m) i;  thr = threshold + beta a + theta;
x = (v - thr) / thr;  s = H(x);  v <- v - thr s (soft reset);  a <- a_a a + s;  tr <- a_t tr + s.

The spike uses a Heaviside forward pass with the triangular surrogate derivative
psi(x) = max(0, 1 - |x|/width) / width, and the soft reset does not carry gradient
through thr (as `neurons.alif_step`). The Pallas op's custom_vjp differentiates the
reference, so `jax.grad` through it equals `jax.grad` through the reference.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Elements per program: enough to stream, few enough that 11 live [block] arrays stay in
# registers.
_BLOCK_ELEMS = 2048
_MAX_BLOCK_N = 1024


class AlifConstants(NamedTuple):
  """Per-tick decay factors exp(-dt/tau) and the threshold model (hashable, static)."""

  a_s: float
  a_m: float
  a_a: float
  a_t: float
  beta: float
  threshold: float
  width: float


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(x: jax.Array, width: float = 0.5) -> jax.Array:
  """Heaviside(x) with a triangular surrogate derivative of half-width `width`."""
  del width
  return (x > 0).astype(x.dtype)


@spike.defjvp
def _spike_jvp(width, primals, tangents):
  (x,), (dx,) = primals, tangents
  return spike(x, width), pseudo_derivative(x, width) * dx


def pseudo_derivative(x: jax.Array, width: float = 0.5) -> jax.Array:
  """psi(x) = max(0, 1 - |x|/width) / width: the surrogate d spike / d x."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(x) / width) / width


def _alif_math(v, i, a, tr, cur, theta, c: AlifConstants, spike_fn):
  """The tick's arithmetic, shared by the reference (on [B, N]) and the kernel (on blocks)."""
  i = c.a_s * i + cur
  v = c.a_m * v + (1.0 - c.a_m) * i
  thr = c.threshold + c.beta * a + theta
  x = (v - thr) / thr
  s = spike_fn(x)
  v = v - jax.lax.stop_gradient(thr) * s
  a = c.a_a * a + s
  tr = c.a_t * tr + s
  return v, i, a, tr, s, x


def alif_update_reference(v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN, theta_N, *, a_s, a_m, a_a, a_t,
                          beta, threshold, width):
  """One ALIF tick in plain jnp -> (v, i, a, tr, s, x), each [B, N] float32.

  theta_N: per-neuron homeostatic threshold offset, broadcast over the batch.
  x is the scaled distance to threshold (v - thr)/thr; s = H(x) with surrogate psi(x).
  """
  c = AlifConstants(a_s, a_m, a_a, a_t, beta, threshold, width)
  return _alif_math(v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN, theta_N[None, :], c,
                    functools.partial(spike, width=width))


def _kernel(v_ref, i_ref, a_ref, tr_ref, cur_ref, theta_ref,
            v_out, i_out, a_out, tr_out, s_out, x_out, *, constants: AlifConstants):
  outs = _alif_math(v_ref[...], i_ref[...], a_ref[...], tr_ref[...], cur_ref[...],
                    theta_ref[...][None, :], constants, lambda x: (x > 0).astype(x.dtype))
  for ref, val in zip((v_out, i_out, a_out, tr_out, s_out, x_out), outs):
    ref[...] = val


def _largest_pow2_divisor(n: int, cap: int) -> int:
  d = 1
  while d < cap and n % (2 * d) == 0:
    d *= 2
  return d


def _alif_pallas(v, i, a, tr, cur, theta, constants, interpret):
  b, n = v.shape
  n_pad = n if _largest_pow2_divisor(n, 128) >= 32 else pl.cdiv(n, 128) * 128
  if n_pad != n:  # odd sizes only (tests); real brains are whole tiles
    v, i, a, tr, cur = (jnp.pad(z, ((0, 0), (0, n_pad - n))) for z in (v, i, a, tr, cur))
    theta = jnp.pad(theta, (0, n_pad - n))
  block_n = _largest_pow2_divisor(n_pad, _MAX_BLOCK_N)
  block_b = _largest_pow2_divisor(b, _BLOCK_ELEMS // block_n)
  spec = pl.BlockSpec((block_b, block_n), lambda bi, ni: (bi, ni))
  outs = pl.pallas_call(
      functools.partial(_kernel, constants=constants),
      grid=(b // block_b, n_pad // block_n),
      in_specs=[spec] * 5 + [pl.BlockSpec((block_n,), lambda bi, ni: (ni,))],
      out_specs=[spec] * 6,
      out_shape=[jax.ShapeDtypeStruct((b, n_pad), jnp.float32)] * 6,
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret,
      name="alif_update",
  )(v, i, a, tr, cur, theta)
  return tuple(o[:, :n] for o in outs) if n_pad != n else tuple(outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _alif(v, i, a, tr, cur, theta, constants, interpret):
  return _alif_pallas(v, i, a, tr, cur, theta, constants, interpret)


def _alif_fwd(v, i, a, tr, cur, theta, constants, interpret):
  return _alif_pallas(v, i, a, tr, cur, theta, constants, interpret), (v, i, a, tr, cur, theta)


def _alif_bwd(constants, interpret, res, g):
  """The reference's vjp (XLA fuses this elementwise backward into one pass)."""
  del interpret
  _, vjp = jax.vjp(
      lambda *xs: alif_update_reference(*xs, **constants._asdict()), *res)
  return vjp(tuple(g))


_alif.defvjp(_alif_fwd, _alif_bwd)


def alif_update(v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN, theta_N, *, a_s: float, a_m: float,
                a_a: float, a_t: float, beta: float, threshold: float, width: float,
                interpret: bool = False):
  """Pallas `alif_update_reference`: one fused pass over the [B, N] state.

  All state float32 [B, N]; theta_N [N]. Decays a_* = exp(-dt/tau) and the threshold
  parameters are Python floats (static). Returns (v, i, a, tr, s, x).
  Differentiable: the custom_vjp is the reference's (surrogate psi for the spike).
  """
  b, n = v_BxN.shape
  for name, z in (("i", i_BxN), ("a", a_BxN), ("tr", tr_BxN), ("cur", cur_BxN)):
    if z.shape != (b, n):
      raise ValueError(f"alif_update: {name} has shape {z.shape}, expected v's {(b, n)}.")
  if theta_N.shape != (n,):
    raise ValueError(f"alif_update: theta has shape {theta_N.shape}, expected {(n,)}.")
  constants = AlifConstants(*(float(c) for c in (a_s, a_m, a_a, a_t, beta, threshold, width)))
  state = (v_BxN, i_BxN, a_BxN, tr_BxN, cur_BxN)
  return _alif(*(z.astype(jnp.float32) for z in state), theta_N.astype(jnp.float32), constants,
               interpret)
