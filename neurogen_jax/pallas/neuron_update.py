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

from neurogen_jax.pallas import propagate

# Elements per program: enough to stream, few enough that 11 live [block] arrays stay in
# registers.
_BLOCK_ELEMS = 2048
_MAX_BLOCK_N = 1024
_NUM_WARPS = 4
# Switches for measurements (experiments.tick_sweep), both on: skip the drive / read sum of
# blocks whose gain / read weight is zero; with precomputed block flags, count a block inside
# one group with one row sum.
_SKIP_IDLE_BLOCKS = True
_COUNT_BY_BLOCK = True
# The fused propagation + tick (`propagate_tick`): one program per (batch tile, 128-neuron
# post block); the tile products want the propagation kernel's pipelining.
_FUSED_NUM_WARPS = 4
_FUSED_NUM_STAGES = 3


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


def _layout(b: int, n: int) -> tuple[int, int, int]:
  """(n_pad, block_b, block_n) of an elementwise [B, N] kernel: N padded to whole 128s
  where it has no power-of-2 factor >= 32 (odd test sizes only; brains are whole tiles)."""
  n_pad = n if _largest_pow2_divisor(n, 128) >= 32 else pl.cdiv(n, 128) * 128
  block_n = _largest_pow2_divisor(n_pad, _MAX_BLOCK_N)
  return n_pad, _largest_pow2_divisor(b, _BLOCK_ELEMS // block_n), block_n


def _alif_pallas(v, i, a, tr, cur, theta, constants, interpret):
  b, n = v.shape
  n_pad, block_b, block_n = _layout(b, n)
  if n_pad != n:
    v, i, a, tr, cur = (jnp.pad(z, ((0, 0), (0, n_pad - n))) for z in (v, i, a, tr, cur))
    theta = jnp.pad(theta, (0, n_pad - n))
  spec = pl.BlockSpec((block_b, block_n), lambda bi, ni: (bi, ni))
  outs = pl.pallas_call(
      functools.partial(_kernel, constants=constants),
      grid=(b // block_b, n_pad // block_n),
      in_specs=[spec] * 5 + [pl.BlockSpec((block_n,), lambda bi, ni: (ni,))],
      out_specs=[spec] * 6,
      out_shape=[jax.ShapeDtypeStruct((b, n_pad), jnp.float32)] * 6,
      # v, i, a, tr are updated in place (and cur's buffer takes s): a state array that is
      # dead after the tick (the scan carry) needs no copy into a fresh buffer.
      input_output_aliases={0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
      compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=1),
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
  parameters are Python floats (static). Returns (v, i, a, tr, s, x). The state and cur
  buffers are updated in place where XLA can donate them.
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


# ------------------------------------------------------------------ the whole neuron tick
#
# `alif_tick` is `alif_update` with the tick's neighbours folded into the same pass: the
# input current is composed from the propagated spikes and the token drive, and the
# per-token sums (readout traces; with `collect`, the e-prop factor psi and the spike
# count) are accumulated in place. Separately these are four more passes over [B, N]
# arrays per tick; fused they cost one read and one write of each accumulator.

# Rows of the per-neuron vector input vec_6xN.
TICK_VEC_ROWS = ("theta", "gate_mask", "gain", "read", "learn", "sign")


def compose_current(prop, drive, gate, mask, gain):
  """The tick's input current: propagated spikes (scaled by the gate where mask > 0) plus
  the token drive times its per-neuron gain."""
  return prop * jnp.where(mask > 0, gate, 1.0) + drive * gain


def accumulate(tr, s, x, read, learn, read_acc, post_acc, spk_acc, width):
  """The per-token sums after a tick: (read + read_weight * tr[, post + psi(x) * learn,
  spikes + s]); post/spikes keep their dtype and are skipped when post_acc is None."""
  sums = (read_acc + tr * read,)
  if post_acc is not None:
    sums += ((post_acc + pseudo_derivative(x, width) * learn).astype(post_acc.dtype),
             (spk_acc + s).astype(spk_acc.dtype))
  return sums


def signed_spikes(s, sign, dtype):
  """q = s * sign in `dtype`: the spikes a tick propagates (exact: 0 or +-1)."""
  return (s * sign).astype(dtype)


def group_counts(s_BxN, group_N, n_groups: int):
  """[B, G] spikes of each neuron group: s summed over the neurons whose group_N is g
  (exact: 0/1 spikes, full float32 dot). Neurons with a group outside [0, G) count nowhere."""
  onehot_NxG = (group_N[:, None] == jnp.arange(n_groups, dtype=group_N.dtype)).astype(jnp.float32)
  return jnp.dot(s_BxN.astype(jnp.float32), onehot_NxG, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def _tick_math(v, i, a, tr, prop, drive, gate, vec, read_acc, post_acc, spk_acc,
               c: AlifConstants, spike_fn, signed_dtype):
  """The tick's arithmetic on [B, N] (reference) or blocks (kernel); vec rows [1, N].
  The state (v, i, a, tr) may be stored in bfloat16: it is computed in float32 and returned
  in its own dtype (the read sum takes the float32 trace)."""
  theta, mask, gain, read, learn, sign = vec
  state_dtype = v.dtype
  v, i, a, tr = (z.astype(jnp.float32) for z in (v, i, a, tr))
  cur = compose_current(prop.astype(jnp.float32), drive, gate, mask, gain)
  v, i, a, tr, s, x = _alif_math(v, i, a, tr, cur, theta, c, spike_fn)
  q = signed_spikes(s, sign, signed_dtype)
  state = tuple(z.astype(state_dtype) for z in (v, i, a, tr))
  return state + (s, q) + accumulate(tr, s, x, read, learn, read_acc, post_acc, spk_acc,
                                     c.width)


def alif_tick_reference(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN,
                        read_BxN, post_BxN=None, spikes_BxN=None, group_N=None, *, a_s, a_m,
                        a_a, a_t, beta, threshold, width, signed_dtype=jnp.bfloat16,
                        n_groups: int = 0, write_s: bool = True):
  """One ALIF tick with its input composition and per-token sums, in plain jnp.

    cur  = prop * (gate_B where gate_mask else 1) + drive * gain
    (v, i, a, tr, s, x) = alif_update_reference(v, i, a, tr, cur, theta)
    q = s * sign  (in `signed_dtype`: the signed spikes that the next tick propagates)
    read += read_weight * tr;  post += psi(x) * learn;  spikes += s   (the last two only
    when post/spikes are given; they keep their dtype, e.g. bfloat16)

  vec_6xN rows: TICK_VEC_ROWS = theta (homeostatic offset), gate_mask (neurons the
  per-stream gate_B scales), gain (of the token drive), read (this tick's readout weight,
  the same for every neuron), learn (this tick's e-prop weight per neuron), sign (+1
  excitatory, -1 inhibitory); or `PhaseRows` (`tick_rows(...).at(phase)`): those rows of
  every phase, laid out once per token.
  With one stream (B = 1) prop may be the propagation's K partial sums [K, N]
  (`propagate_events_pallas(partials=True)`): the tick adds them up.
  group_N (with n_groups = G > 0): each neuron's group in [0, G) (e.g. its brain area); the
  tick then also returns counts_BxG, this tick's spikes per group (`group_counts`).
  write_s=False returns None for s (a caller that propagates q has s = q * sign).
  Returns (v, i, a, tr, s, q, read[, post, spikes][, counts]).
  """
  c = AlifConstants(a_s, a_m, a_a, a_t, beta, threshold, width)
  if isinstance(vec_6xN, PhaseRows):
    vec_6xN = vec_6xN.vec_6xN(v_BxN.shape[1])
  vec = tuple(vec_6xN[k][None, :] for k in range(len(TICK_VEC_ROWS)))
  if prop_BxN.shape[0] != v_BxN.shape[0]:  # B = 1: the K partial sums of the propagation
    prop_BxN = jnp.sum(prop_BxN, axis=0, keepdims=True)
  outs = _tick_math(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B[:, None], vec,
                    read_BxN, post_BxN, spikes_BxN, c, functools.partial(spike, width=width),
                    jnp.dtype(signed_dtype))
  if n_groups:
    outs += (group_counts(outs[4], group_N, n_groups),)
  if not write_s:
    outs = outs[:4] + (None,) + outs[5:]
  return outs


# Row of the kernel's padded vector input that carries the neuron groups (after the
# TICK_VEC_ROWS; the rows travel as a power of two anyway).
_GROUP_ROW = len(TICK_VEC_ROWS)


def _block_group_counts(s, group_n, g_pad: int, tensor_cores: bool, flags=None):
  """Kernel body: a [block_b, block_n] block's spikes per group -> [block_b, g_pad] (exact:
  0/1 spikes, float32 sums). With flags, the block's precomputed (inside one group?, that
  group) scalars (`_block_flags`), a block inside one group (the brain's areas span whole
  blocks) takes one row sum. Otherwise the block's spikes are summed against the
  [block_n, G] one-hot: a tensor-core dot when it has >= 16 rows (`tensor_cores`), else a
  broadcast reduction (the few-stream tick, where finding the block's groups in the kernel
  measured slower than the one-hot sums)."""
  block_n = s.shape[1]

  def across_groups():
    if tensor_cores:
      ids = jax.lax.broadcasted_iota(jnp.int32, (block_n, g_pad), 1).astype(jnp.float32)
      onehot = (group_n[:, None] == ids).astype(jnp.bfloat16)
      return jnp.dot(s.astype(jnp.bfloat16), onehot, preferred_element_type=jnp.float32)
    ids = jax.lax.broadcasted_iota(jnp.int32, (g_pad, block_n), 0).astype(jnp.float32)
    onehot = (group_n[None, :] == ids).astype(jnp.float32)
    return jnp.sum(s[:, None, :] * onehot[None], axis=2)

  if flags is None or not _COUNT_BY_BLOCK:  # (the switch: measurement only)
    return across_groups()
  inside, gid = flags
  ids_1xG = jax.lax.broadcasted_iota(jnp.int32, (1, g_pad), 1).astype(jnp.float32)
  one_group = lambda: jnp.sum(s, axis=1, keepdims=True) * (ids_1xG == gid).astype(jnp.float32)
  return jax.lax.cond(inside, one_group, across_groups)


# Rows of `_block_flags`: per kernel block of neurons, whether its drive gain / read weight
# is non-zero anywhere, whether all its neurons are in one group, and that group.
_FLAG_ROWS = ("driven", "reading", "one_group", "group")
# From this many streams on, the tick reads its blocks' flags precomputed (one small XLA
# reduction per call, a few µs with its launch) instead of reducing the rows in every program
# (a barrier each, before the loads they guard), and counts a block inside one group with a
# row sum. Measured in the learning step (docs/BENCHMARKS.md, session 16): 2,048 streams
# 3,574 -> 3,485 µs/tick against the kernel that found them itself; 256 streams 591 µs/tick
# against session 15's 606 (another machine). At one stream (generation, ~30 µs per tick) the
# in-kernel group search alone cost 1.3 µs/tick; between, the reduction's launch may eat
# what it saves (not measured). This applies to [6, N] rows given per call: rows laid out
# once per token (`tick_rows`, as the brain does) carry the flags at every B (session 18:
# 64 streams 280.0 -> 270.1 µs/tick; one stream 27.7 -> 27.9, within the spread).
_FLAGS_MIN_B = 256


def _block_flags(vec_RxN, block_n: int, n_groups: int):
  """[4, N / block_n] float32 rows `_FLAG_ROWS` of the kernel's vector input vec_RxN (rows
  TICK_VEC_ROWS, then the groups)."""
  n_blocks = vec_RxN.shape[1] // block_n
  blocks = lambda row: vec_RxN[row].reshape(n_blocks, block_n)
  driven = jnp.any(blocks(TICK_VEC_ROWS.index("gain")) != 0, axis=1)
  reading = jnp.any(blocks(TICK_VEC_ROWS.index("read")) != 0, axis=1)
  if n_groups:
    group = blocks(_GROUP_ROW)
    lo, hi = jnp.min(group, axis=1), jnp.max(group, axis=1)
  else:
    lo = hi = jnp.zeros((n_blocks,), jnp.float32)
  return jnp.stack([driven.astype(jnp.float32), reading.astype(jnp.float32),
                    (lo == hi).astype(jnp.float32), lo])


class PhaseRows(NamedTuple):
  """The tick's per-neuron rows of every phase, laid out once per token (`tick_rows`), and
  the phase of the tick at hand (`at`): the tick loop then indexes them by phase instead of
  forming its rows (and the Pallas kernel's block flags) again each tick.

  vec_PxRxN: [P, R, N'] float32, each phase's TICK_VEC_ROWS (R = 6, N' = N: as given, for
    the reference; a kernel given these lays out its phase's rows each tick); laid out
    for the Pallas kernel also the group row and zero rows up to a power of two (R = 8),
    N' the kernel's padded N.
  flags_PxFxNb: [P, 4, N' / block_n] float32, each phase's `_block_flags` for a kernel with
    blocks of block_n neurons; None for the reference (and a kernel then reduces its rows).
  phase: int32 scalar, the row of this tick.
  """

  vec_PxRxN: jax.Array
  flags_PxFxNb: jax.Array | None
  phase: jax.Array

  def at(self, phase) -> PhaseRows:
    """The same table at `phase` (traced or not)."""
    return self._replace(phase=jnp.asarray(phase, jnp.int32))

  def vec_6xN(self, n: int) -> jax.Array:
    """This tick's [6, N] rows (TICK_VEC_ROWS), as `alif_tick` takes them unprepared."""
    return self.vec_PxRxN[self.phase, :len(TICK_VEC_ROWS), :n]


def _kernel_rows(vec_6xN, group_N, n_pad: int):
  """[8, n_pad] float32: the 6 TICK_VEC_ROWS, the groups (-1 on padded neurons: counted
  nowhere; zeros without groups) and zero rows: Triton blocks have power-of-2 sizes."""
  n = vec_6xN.shape[-1]
  rows = pl.next_power_of_2(len(TICK_VEC_ROWS) + 1)
  vec = jnp.pad(vec_6xN.astype(jnp.float32), ((0, 0), (0, n_pad - n)))
  extra = jnp.zeros((rows - len(TICK_VEC_ROWS), n_pad), jnp.float32)
  if group_N is not None:
    extra = extra.at[0].set(
        jnp.pad(group_N.astype(jnp.float32), (0, n_pad - n), constant_values=-1.0))
  return jnp.concatenate([vec, extra])


def tick_rows(vec_Px6xN: jax.Array, group_N: jax.Array | None = None, n_groups: int = 0, *,
              batch: int, fused_tile: int = 0) -> PhaseRows:
  """Lays out every phase's [6, N] rows (TICK_VEC_ROWS) for `alif_tick` (fused_tile = 0)
  or `propagate_tick` (fused_tile = the propagation's tile T) with `batch` streams: padded,
  with the group row when n_groups > 0, and each block's flags (`_block_flags`). The
  result, `.at(phase)`, stands in for vec_6xN; the kernel then reads the phase's rows and
  flags from it (no per-tick work besides), at every B: the flags cost nothing per tick
  here, where `alif_tick` given [6, N] rows computes them per call only from
  _FLAGS_MIN_B streams on. The same results as vec_6xN (tested)."""
  p, r, n = vec_Px6xN.shape
  if r != len(TICK_VEC_ROWS):
    raise ValueError(f"tick_rows: vec has {r} rows per phase, expected {len(TICK_VEC_ROWS)} "
                     f"({TICK_VEC_ROWS}).")
  if (group_N is None) != (n_groups == 0):
    raise ValueError("tick_rows: give group_N with n_groups > 0, or neither.")
  n_pad, _, block_n = (n, 0, fused_tile) if fused_tile else _layout(batch, n)
  group = group_N if n_groups else None
  vec_PxRxN = jnp.stack([_kernel_rows(vec_Px6xN[k], group, n_pad) for k in range(p)])
  flags_PxFxNb = jnp.stack([_block_flags(vec_PxRxN[k], block_n, n_groups) for k in range(p)])
  return PhaseRows(vec_PxRxN, flags_PxFxNb, jnp.zeros((), jnp.int32))


def _tick_kernel(*refs, constants: AlifConstants, collect: bool, signed_dtype, partials: bool,
                 n_groups: int, write_s: bool, fused_block_b: int = 0, flags: bool = False,
                 phase_input: bool = False):
  n_in = (11 if collect else 9) + flags + phase_input  # the phase last
  if fused_block_b:  # the propagation runs here: (col, gain, q, w) lead, prop is not an input
    col_ref, gain_ref, q_ref, w_ref = refs[:4]
    ins, outs = refs[4:3 + n_in], refs[3 + n_in:]
    ins = ins[:4] + (None,) + ins[4:]
    prop = propagate.block_current(col_ref, gain_ref, q_ref, w_ref, pl.program_id(0),
                                   pl.program_id(1), block_b=fused_block_b)
  else:
    ins, outs = refs[:n_in], refs[n_in:]
    prop = ins[4][...]
  v, i, a, tr = (r[...] for r in ins[:4])
  gate = ins[6][...]
  if partials:  # [K, block_n] partial sums of one stream's propagation
    prop = jnp.sum(prop, axis=0, keepdims=True)
  # The vector rows of every phase ([P, 8, N]): this tick's phase (a scalar input when
  # there are several, else 0: no load for the address to wait on), this block's columns.
  phase, block_n = (ins[-1][0] if phase_input else 0), v.shape[1]
  cols = pl.ds(pl.multiple_of(pl.program_id(1) * block_n, block_n), block_n)
  row = lambda k: ins[7][phase, k, cols][None, :]
  rows = tuple(row(k) for k in range(len(TICK_VEC_ROWS)))  # one load per row
  gain, read_w = rows[TICK_VEC_ROWS.index("gain")], rows[TICK_VEC_ROWS.index("read")]
  # Most ticks drive only some areas and read none: a block whose drive gain (read weight)
  # is all zero does not load the drive (nor load and store its read sum, which its
  # aliased buffer keeps): the same sums, fewer bytes.
  zeros = lambda: jnp.zeros(v.shape, jnp.float32)
  block_flags = None
  if flags:  # this block's precomputed flags (`_block_flags`): scalar loads, no reductions
    flag = lambda name: ins[-1 - phase_input][phase, _FLAG_ROWS.index(name), pl.program_id(1)]
    driven, reading = flag("driven") > 0, flag("reading") > 0
    block_flags = (flag("one_group") > 0, flag("group"))
  else:
    driven, reading = jnp.max(jnp.abs(gain)) > 0, jnp.max(jnp.abs(read_w)) > 0
  if _SKIP_IDLE_BLOCKS:
    drive = jax.lax.cond(driven, lambda: ins[5][...].astype(jnp.float32), zeros)
    read = jax.lax.cond(reading, lambda: ins[8][...], zeros)
  else:  # (measurement only: every block loads the drive and loads and stores its read sum)
    drive, read, reading = ins[5][...].astype(jnp.float32), ins[8][...], True
  post, spk = (ins[9][...], ins[10][...]) if collect else (None, None)
  vals = _tick_math(v, i, a, tr, prop, drive, gate[:, None], rows, read, post, spk, constants,
                    lambda x: (x > 0).astype(x.dtype), signed_dtype)
  if n_groups:  # this block's spikes per group: [block_b, G_pad]
    vals += (_block_group_counts(vals[4], row(_GROUP_ROW)[0], outs[-1].shape[1],
                                 tensor_cores=bool(fused_block_b), flags=block_flags),)
  if not write_s:  # s = q * sign: the caller rebuilds it when it needs it
    vals = vals[:4] + vals[5:]
  read_at = 6 if write_s else 5  # v, i, a, tr, [s,] q, read, ...
  for k, (ref, val) in enumerate(zip(outs, vals, strict=True)):
    if k == read_at:
      @pl.when(reading)
      def _store_read(ref=ref, val=val):
        ref[...] = val
    else:
      ref[...] = val


def _tick_pallas(args, constants, collect, signed_dtype, n_groups, write_s, interpret,
                 prop_from=None, fused_block_b=0, fused_warps=0, fused_stages=0):
  """Launch `_tick_kernel`. prop_from = (q, w, col, gain) with fused_block_b: args[4] (prop)
  is None and each program computes its block's current from q (`propagate_tick`)."""
  if n_groups:  # the groups ride as one more row of the vector input
    args, group_N = args[:-1], args[-1]
  b, n = args[0].shape
  if fused_block_b:  # one program per (batch tile, post block): the propagation's grid
    partials, n_pad, block_b, block_n = False, n, fused_block_b, prop_from[1].shape[-1]
  else:
    partials = args[4].shape[0] != b  # B = 1 and prop holds K partial sums
    n_pad, block_b, block_n = _layout(b, n)
  vec = args[7]
  if isinstance(vec, PhaseRows) and vec.vec_PxRxN.shape[1] == len(TICK_VEC_ROWS):
    vec = vec.vec_6xN(n)  # rows not laid out (the reference's form): as [6, N] rows
  if n_pad != n:  # every [B, N]; gate_B (args[6]) has no N, the rows are padded below
    args = tuple(z if k in (6, 7) else jnp.pad(z, ((0, 0), (0, n_pad - n)))
                 for k, z in enumerate(args))
  if isinstance(vec, PhaseRows):  # every phase's rows and flags, laid out by `tick_rows`
    vec_PxRxN, flags_PxFxNb, phase = vec
    want = (pl.next_power_of_2(len(TICK_VEC_ROWS) + 1), n_pad)
    if vec_PxRxN.shape[1:] != want or (flags_PxFxNb is not None
                                        and flags_PxFxNb.shape[1:] != (4, n_pad // block_n)):
      raise ValueError(
          f"alif_tick: the PhaseRows were laid out for another kernel (rows "
          f"{vec_PxRxN.shape[1:]}, flags {None if flags_PxFxNb is None else flags_PxFxNb.shape[1:]}"
          f"; this one needs rows {want} and flags {(4, n_pad // block_n)}): build them with "
          "tick_rows(batch=B) for alif_tick, tick_rows(fused_tile=T) for propagate_tick.")
  else:  # this tick's [6, N] rows: laid out here, as one phase
    vec_PxRxN = _kernel_rows(vec, group_N if n_groups else None, n_pad)[None]
    phase, flags_PxFxNb = jnp.zeros((), jnp.int32), None
    # (The fused kernel, >= 16 streams, always reads them: a block of 128 neurons per program.)
    if b >= _FLAGS_MIN_B or fused_block_b:
      flags_PxFxNb = _block_flags(vec_PxRxN[0], block_n, n_groups)[None]
  flags = flags_PxFxNb is not None
  args = args[:7] + (vec_PxRxN,) + args[8:]
  if flags:  # one more input: the blocks' flags, read by scalar loads
    args += (flags_PxFxNb,)
  phase_input = vec_PxRxN.shape[0] > 1
  if phase_input:  # last: the phase, a scalar load
    args += (jnp.reshape(phase, (1,)).astype(jnp.int32),)
  spec = pl.BlockSpec((block_b, block_n), lambda bi, ni: (bi, ni))
  prop_spec = spec
  if partials:  # the K partial rows likewise, as the next power of two (zero rows added)
    k_rows = pl.next_power_of_2(args[4].shape[0])
    if k_rows != args[4].shape[0]:
      args = args[:4] + (jnp.pad(args[4], ((0, k_rows - args[4].shape[0]), (0, 0))),) + args[5:]
    prop_spec = pl.BlockSpec((k_rows, block_n), lambda bi, ni: (0, ni))
  in_specs = [spec] * 4 + [prop_spec, spec] + [
      pl.BlockSpec((block_b,), lambda bi, ni: (bi,)),
      pl.BlockSpec(),  # every phase's rows: the kernel loads its phase's block
      spec] + ([spec, spec] if collect else []) + [pl.BlockSpec()] * (flags + phase_input)
  state_dtype = args[0].dtype  # v, i, a, tr: float32 or bfloat16
  out_dtypes = ([state_dtype] * 4 + ([jnp.float32] if write_s else []) + [signed_dtype, jnp.float32]
                + ([args[9].dtype, args[10].dtype] if collect else []))
  out_specs = [spec] * len(out_dtypes)
  out_shape = [jax.ShapeDtypeStruct((b, n_pad), d) for d in out_dtypes]
  if n_groups:  # each program's [block_b, G_pad] group counts, summed over programs below
    # (The fused kernel counts with a dot, whose operands need 16 columns.)
    g_pad = max(pl.next_power_of_2(n_groups), 16 if fused_block_b else 1)
    out_specs.append(pl.BlockSpec((block_b, g_pad), lambda bi, ni: (bi, ni)))
    out_shape.append(jax.ShapeDtypeStruct((b, n_pad // block_n * g_pad), jnp.float32))
  # In place: v, i, a, tr; s takes prop's buffer (not the [K, N] partials: another shape;
  # not a bfloat16 prop: another dtype);
  # the sums stay where they are (the read sum must: a tick that reads nothing does not
  # store it). q is new (in the brain's tick loop the previous q is dead by then: XLA gives
  # it the same buffer).
  o = 0 if write_s else -1  # output positions after s move down by one without it
  s_into_prop = write_s and not fused_block_b and not partials and args[4].dtype == jnp.float32
  aliases = ({0: 0, 1: 1, 2: 2, 3: 3, 8: 6 + o} | ({4: 4} if s_into_prop else {})
             | ({9: 7 + o, 10: 8 + o} if collect else {}))
  num_warps, num_stages = _NUM_WARPS, 1
  if fused_block_b:
    # The propagation's inputs lead (col, gain, q whole; post block r's K weight tiles);
    # prop is no input, so the tick's input positions after it move down by one.
    q, w, col, gain = prop_from
    k_slots, t = w.shape[1], w.shape[-1]
    full = pl.BlockSpec()
    in_specs = [full, full, full, pl.BlockSpec((None, k_slots, t, t), lambda bi, ni: (ni, 0, 0, 0))
                ] + in_specs[:4] + in_specs[5:]
    args = (col.astype(jnp.int32), gain.astype(jnp.float32), q, w) + args[:4] + args[5:]
    aliases = {k + (4 if k < 4 else 3): v for k, v in aliases.items()}
    num_warps, num_stages = fused_warps or _FUSED_NUM_WARPS, fused_stages or _FUSED_NUM_STAGES
  outs = pl.pallas_call(
      functools.partial(_tick_kernel, constants=constants, collect=collect,
                        signed_dtype=signed_dtype, partials=partials, n_groups=n_groups,
                        write_s=write_s, fused_block_b=fused_block_b, flags=flags,
                        phase_input=phase_input),
      grid=(b // block_b, n_pad // block_n),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      input_output_aliases=aliases,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="propagate_tick" if fused_block_b else "alif_tick",
  )(*args)
  if n_groups:
    counts = outs[-1].reshape(b, -1, g_pad).sum(axis=1)[:, :n_groups]
    outs = outs[:-1]
  outs = tuple(z[:, :n] for z in outs) if n_pad != n else tuple(outs)
  if not write_s:
    outs = outs[:4] + (None,) + outs[4:]
  return outs + ((counts,) if n_groups else ())


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _tick(args, constants, collect, signed_dtype, n_groups, write_s, interpret):
  return _tick_pallas(args, constants, collect, signed_dtype, n_groups, write_s, interpret)


def _tick_fwd(args, constants, collect, signed_dtype, n_groups, write_s, interpret):
  return (_tick_pallas(args, constants, collect, signed_dtype, n_groups, write_s, interpret),
          args)


def _tick_bwd(constants, collect, signed_dtype, n_groups, write_s, interpret, args, g):
  """The reference's vjp (elementwise but for the group counts' small dot)."""
  del interpret
  # args holds post and spikes exactly when collecting, the groups last when counting.
  def ref(*xs):
    sums = xs[9:11] if collect else (None, None)
    group = xs[-1] if n_groups else None
    return alif_tick_reference(*xs[:9], *sums, group, **constants._asdict(),
                               signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s)
  _, vjp = jax.vjp(ref, *args)
  return (vjp(tuple(g)),)


_tick.defvjp(_tick_fwd, _tick_bwd)


def alif_tick(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN, read_BxN,
              post_BxN=None, spikes_BxN=None, group_N=None, *, a_s: float, a_m: float,
              a_a: float, a_t: float, beta: float, threshold: float, width: float,
              signed_dtype=jnp.bfloat16, n_groups: int = 0, write_s: bool = True,
              interpret: bool = False):
  """Pallas `alif_tick_reference`: the whole neuron tick in one pass over [B, N].

  State float32 or bfloat16 (v, i, a, tr alike: computed in float32, stored in their dtype),
  prop float32 or bfloat16 [B, N] (read in its dtype, added in float32; or, with B = 1,
  its K partial sums [K, N], added up in the kernel), drive and read float32 [B, N]; gate_B [B]; vec_6xN [6, N] (rows
  TICK_VEC_ROWS); post/spikes [B, N] in their own dtype (bfloat16 in the brain), both or
  neither; group_N [N] with n_groups > 0: the tick also counts its spikes per group, each
  program reducing its block (no separate pass over s). write_s=False: s is not written
  (None in its place; s = q * sign): 4 bytes per neuron and stream less per tick. A block
  whose drive gain (read weight) is zero this tick skips the drive (the read sum). With
  B >= _FLAGS_MIN_B those per-block facts, and each block's group, are found once per call
  by a small XLA reduction (`_block_flags`) and read by the programs as scalars; a block
  inside one group then counts its spikes with one row sum. vec_6xN may instead be
  `tick_rows(...).at(phase)`: every phase's rows and flags laid out once (per token),
  read by the kernel at the phase (a scalar input), at every B.
  Returns (v, i, a, tr, s, q, read[, post, spikes][, counts_BxG]) with q = s * sign in
  `signed_dtype`; the state and sums are updated in place where XLA can donate them.
  Differentiable (the reference's vjp).
  """
  kw = dict(a_s=a_s, a_m=a_m, a_a=a_a, a_t=a_t, beta=beta, threshold=threshold, width=width,
            signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s, interpret=interpret)
  args, constants = _tick_args(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN,
                               read_BxN, post_BxN, spikes_BxN, group_N, **kw)
  return _tick(args, constants, post_BxN is not None, jnp.dtype(signed_dtype), int(n_groups),
               bool(write_s), interpret)


def _tick_args(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN, read_BxN,
               post_BxN, spikes_BxN, group_N, *, a_s, a_m, a_a, a_t, beta, threshold, width,
               signed_dtype, n_groups, write_s, interpret):
  """Check `alif_tick`'s arguments -> (the kernel's argument tuple, AlifConstants)."""
  del signed_dtype, write_s, interpret
  b, n = v_BxN.shape
  collect = post_BxN is not None
  if collect != (spikes_BxN is not None):
    raise ValueError("alif_tick: give both post_BxN and spikes_BxN, or neither.")
  named = (("i", i_BxN), ("a", a_BxN), ("tr", tr_BxN), ("drive", drive_BxN),
           ("read", read_BxN)) + ((("post", post_BxN), ("spikes", spikes_BxN)) if collect else ())
  if not (prop_BxN.shape == (b, n) or (b == 1 and prop_BxN.ndim == 2
                                       and prop_BxN.shape[1] == n)):
    raise ValueError(f"alif_tick: prop has shape {prop_BxN.shape}, expected v's {(b, n)} (or, "
                     f"with one stream, [K, {n}] partial sums).")
  for name, z in named:
    if z.shape != (b, n):
      raise ValueError(f"alif_tick: {name} has shape {z.shape}, expected v's {(b, n)}.")
  prepared = isinstance(vec_6xN, PhaseRows)
  vec_shape = vec_6xN.vec_PxRxN.shape[1:] if prepared else vec_6xN.shape
  if gate_B.shape != (b,) or (not prepared and vec_shape != (len(TICK_VEC_ROWS), n)):
    raise ValueError(f"alif_tick: gate {gate_B.shape} / vec {vec_shape} must be {(b,)} / "
                     f"{(len(TICK_VEC_ROWS), n)} (rows {TICK_VEC_ROWS}; or PhaseRows from "
                     "tick_rows).")
  if prepared and (vec_6xN.vec_PxRxN.ndim != 3 or vec_6xN.phase.shape != ()):
    raise ValueError(f"alif_tick: PhaseRows need [P, R, N] rows and a scalar phase (got "
                     f"{vec_6xN.vec_PxRxN.shape}, phase {vec_6xN.phase.shape}): use "
                     "tick_rows(...).at(phase).")
  if (group_N is None) != (n_groups == 0) or (group_N is not None and group_N.shape != (n,)):
    raise ValueError(f"alif_tick: give group_N of shape {(n,)} with n_groups > 0 (got "
                     f"{None if group_N is None else group_N.shape}, n_groups={n_groups}), "
                     "or neither.")
  state = (v_BxN, i_BxN, a_BxN, tr_BxN)
  if {z.dtype for z in state} not in ({jnp.dtype(jnp.float32)}, {jnp.dtype(jnp.bfloat16)}):
    raise ValueError(f"alif_tick: v, i, a, tr must share one dtype, float32 or bfloat16 (got "
                     f"{[str(z.dtype) for z in state]}).")
  constants = AlifConstants(*(float(c) for c in (a_s, a_m, a_a, a_t, beta, threshold, width)))
  for name, z in (("prop", prop_BxN), ("drive", drive_BxN)):
    if z.dtype not in (jnp.float32, jnp.bfloat16):
      raise ValueError(f"alif_tick: {name} must be float32 or bfloat16, got {z.dtype}.")
  # The two currents go in as they are (a bfloat16 drive is read as such: converting it
  # here would be a [B, N] pass per tick).
  f32 = lambda z: z.astype(jnp.float32)
  vec = vec_6xN if prepared else f32(vec_6xN)
  args = state + (prop_BxN, drive_BxN, f32(gate_B), vec, f32(read_BxN))
  if collect:
    args += (post_BxN, spikes_BxN)
  if n_groups:
    args += (f32(group_N),)
  return args, constants


# ------------------------------------------------------- the propagation in the tick kernel
#
# `propagate_tick` = `propagate` then `alif_tick`, in one kernel: the program of (batch
# tile, post block r) computes its block's current from the previous tick's spikes with the
# propagation's tile products (`propagate.block_current`) and runs the tick on it at once,
# so the current is never written to memory and read back, and the tensor-core products of
# some programs overlap the state traffic of others.


def propagate_tick_reference(q_BxN, w_RxKxTxT, col_RxK, gain_RxK, v_BxN, i_BxN, a_BxN, tr_BxN,
                             drive_BxN, gate_B, vec_6xN, read_BxN, post_BxN=None,
                             spikes_BxN=None, group_N=None, **tick_kw):
  """`alif_tick_reference` on the float32 current `propagate_reference(q, w, col, gain)`."""
  prop_BxN = propagate.propagate_reference(q_BxN, w_RxKxTxT, col_RxK, gain_RxK)
  return alif_tick_reference(v_BxN, i_BxN, a_BxN, tr_BxN, prop_BxN, drive_BxN, gate_B, vec_6xN,
                             read_BxN, post_BxN, spikes_BxN, group_N, **tick_kw)


def fused_block_b(b: int) -> int:
  """The batch tile of `propagate_tick` for B streams: the largest power of two dividing B,
  at most 32 (the fastest of 16-64 on an H200, docs/KERNELS.md); 0 when it is below the
  tensor-core dot's 16 rows (then it cannot fuse)."""
  block_b = _largest_pow2_divisor(b, 32)
  return block_b if block_b >= propagate.MIN_BLOCK_B else 0


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7, 8, 9))
def _fused(args, prop_from, constants, collect, signed_dtype, n_groups, write_s, block_b,
           launch, interpret):
  return _tick_pallas(args, constants, collect, signed_dtype, n_groups, write_s, interpret,
                      prop_from=prop_from, fused_block_b=block_b, fused_warps=launch[0],
                      fused_stages=launch[1])


def _fused_fwd(args, prop_from, constants, collect, signed_dtype, n_groups, write_s, block_b,
               launch, interpret):
  return _fused(args, prop_from, constants, collect, signed_dtype, n_groups, write_s, block_b,
                launch, interpret), (args, prop_from)


def _fused_bwd(constants, collect, signed_dtype, n_groups, write_s, block_b, launch,
               interpret, res, g):
  """The vjp of the unfused pair (the Pallas propagation's, then the tick's)."""
  del launch
  args, (q, w, col, gain) = res

  def unfused(args, q, w, gain):
    prop = propagate.propagate(q, w, col, gain, block_b=block_b, interpret=interpret)
    return _tick(args[:4] + (prop,) + args[5:], constants, collect, signed_dtype, n_groups,
                 write_s, interpret)

  _, vjp = jax.vjp(unfused, args, q, w, gain)
  d_args, d_q, d_w, d_gain = vjp(g)
  return d_args, (d_q, d_w, None, d_gain)


_fused.defvjp(_fused_fwd, _fused_bwd)


def propagate_tick(q_BxN, w_RxKxTxT, col_RxK, gain_RxK, v_BxN, i_BxN, a_BxN, tr_BxN, drive_BxN,
                   gate_B, vec_6xN, read_BxN, post_BxN=None, spikes_BxN=None, group_N=None, *,
                   a_s: float, a_m: float, a_a: float, a_t: float, beta: float,
                   threshold: float, width: float, signed_dtype=jnp.bfloat16, n_groups: int = 0,
                   write_s: bool = True, block_b: int | None = None, num_warps: int = 0,
                   num_stages: int = 0, interpret: bool = False):
  """Pallas `propagate_tick_reference`: the block-sparse propagation of the spikes q_BxN
  (`propagate.propagate`'s layout: w_RxKxTxT, col_RxK, gain_RxK) and the neuron tick
  (`alif_tick`, all its other arguments and results) in one kernel.

  The current stays in float32 registers (never stored). One program per (batch tile of
  `block_b` streams, post block of T neurons); block_b (default `fused_block_b(B)`) must be
  a power of two >= 16 that divides B: with fewer streams use `propagate` + `alif_tick`.
  num_warps, num_stages: the launch (0 = the defaults `_FUSED_NUM_WARPS`, `_FUSED_NUM_STAGES`;
  the stages pipeline the tile loads of the propagation's loop).
  q_BxN must not be the buffer of the returned q (XLA keeps them apart: q is an input).
  Differentiable (the unfused pair's vjp).
  """
  b, n = v_BxN.shape
  r, k_slots, t, t2 = w_RxKxTxT.shape
  if t != t2 or n != r * t or q_BxN.shape != (b, n) or col_RxK.shape != (r, k_slots) or (
      gain_RxK.shape != (r, k_slots)):
    raise ValueError(f"propagate_tick: inconsistent shapes q {q_BxN.shape}, v {v_BxN.shape}, "
                     f"w {w_RxKxTxT.shape}, col {col_RxK.shape}, gain {gain_RxK.shape}; "
                     "expected q and v [B, N] with N = R*T and col, gain [R, K].")
  block_b = fused_block_b(b) if block_b is None else block_b
  if block_b < propagate.MIN_BLOCK_B or block_b & (block_b - 1) or b % block_b:
    raise ValueError(f"propagate_tick: B = {b} streams need a batch tile that is a power of two "
                     f">= {propagate.MIN_BLOCK_B} dividing B (got block_b={block_b}); with fewer "
                     "streams call propagate and alif_tick (ops.propagate_tick does).")
  # alif_tick's checks of the tick's arguments; the current's shape and dtype stand in for it.
  prop = jax.ShapeDtypeStruct((b, n), jnp.float32)
  tick_args = (v_BxN, i_BxN, a_BxN, tr_BxN, prop, drive_BxN, gate_B, vec_6xN, read_BxN, post_BxN,
               spikes_BxN, group_N)
  kw = dict(a_s=a_s, a_m=a_m, a_a=a_a, a_t=a_t, beta=beta, threshold=threshold, width=width,
            signed_dtype=signed_dtype, n_groups=n_groups, write_s=write_s, interpret=interpret)
  args, constants = _tick_args(*tick_args, **kw)
  args = args[:4] + (None,) + args[5:]
  return _fused(args, (q_BxN, w_RxKxTxT, col_RxK, gain_RxK), constants, post_BxN is not None,
                jnp.dtype(signed_dtype), int(n_groups), bool(write_s), int(block_b),
                (int(num_warps), int(num_stages)), interpret)
