"""The brain as pure functions: `init`, `cognitive_step`, `run_sequence`.

Shapes: B streams, N neurons, R = N/T row blocks with K tiles of T x T, D embedding
dimension, V vocabulary, Nin input neurons (the input areas, first in N), Nr readout
(Broca) neurons, P phases, A areas.

Weights (`Params`) are shared by all streams; `BrainState` holds per-stream dynamics
[B, N] plus per-neuron homeostatic state [N] that all streams update together.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import ops, readout
from neurogen_jax.config import BrainConfig
from neurogen_jax.connectivity import Connectivity, build_connectivity, init_tiles
from neurogen_jax.neurons import (NeuronState, Propagation, init_neuron_state, neuron_tick,
                                  signed_spikes)
from neurogen_jax.phases import phase_of_tick, phase_table

# How sharply the basal ganglia's Go-NoGo difference opens Broca's gate.
BG_GATE_SLOPE = 4.0


class Params(NamedTuple):
  """Shared parameters.

  tiles: w_RxKxTxT pathway weight magnitudes (>= 0), learned by plasticity (or bptt).
  w_in: w_DxNin token embedding -> input-area drive.
  embed: e_VxD token embedding (tied with the readout).
  w_out: w_NrxD readout of Broca's normalised traces.
  b_out: b_V readout bias.
  conn: static block-sparse structure (not trained).
  """

  tiles: jax.Array
  w_in: jax.Array
  embed: jax.Array
  w_out: jax.Array
  b_out: jax.Array
  conn: Connectivity


class BrainState(NamedTuple):
  """Per-stream dynamics and homeostatic state.

  neurons: NeuronState, each [B, N].
  theta_N: homeostatic threshold offset per neuron (shared by streams).
  rate_N: running mean spikes per tick per neuron (homeostasis, statistics).
  thal_gate_B: last thalamic gate (signal-to-noise of the token drive), in [0.5, 1].
  bg_gate_B: last basal-ganglia gate on Broca, in (0, 2).
  tokens: tokens processed per stream (int32 scalar).
  slow_BxNr: the readout's slow features, an average over tokens of the read areas'
    features ([0, 0] without them, like other switched-off state:
    `BrainConfig.readout_slow_decay`).
  """

  neurons: NeuronState
  theta_N: jax.Array
  rate_N: jax.Array
  thal_gate_B: jax.Array
  bg_gate_B: jax.Array
  tokens: jax.Array
  slow_BxNr: jax.Array


class StepAux(NamedTuple):
  """What one cognitive step reports besides logits.

  features_BxNr: the read areas' traces averaged over the read phase (the readout's input;
    [B, 2 Nr] with the slow features: `readout.with_slow`).
  rates_PxA: spikes per neuron per tick in each phase and area (mean over streams).
  pre_BxN: pre-synaptic trace at the end of the token (tau_trace low-pass of its spikes).
  post_BxN: surrogate pseudo-derivative averaged over learning ticks (e-prop factor).
  spikes_BxN: spike count of the token.
  raster_TxS: spikes of stream 0 for a strided neuron sample per tick (when asked).
  """

  features_BxNr: jax.Array
  rates_PxA: jax.Array
  pre_BxN: jax.Array
  post_BxN: jax.Array
  spikes_BxN: jax.Array
  raster_TxS: jax.Array | None


@functools.partial(jax.jit, static_argnames=("config",))
def init_params(config: BrainConfig, key: jax.Array) -> Params:
  """Fresh parameters, deterministic in `key`. Jitted: one program per config (which the
  persistent compilation cache keeps) instead of ~130 small op-by-op compilations."""
  k_conn, k_tiles, k_in, k_emb = jax.random.split(key, 4)
  conn = build_connectivity(config, k_conn)
  d, v = config.embedding_dim, config.vocab_size
  return Params(
      tiles=init_tiles(config, conn, k_tiles),
      w_in=jax.random.normal(k_in, (d, config.input_size), jnp.float32)
      * (config.input_scale / np.sqrt(d)),
      embed=jax.random.normal(k_emb, (v, d), jnp.float32),
      w_out=jnp.zeros((config.readout_size, d), jnp.float32),
      b_out=jnp.full((v,), -np.log(v), jnp.float32),
      conn=conn,
  )


def init_state(config: BrainConfig, batch: int) -> BrainState:
  n = config.num_neurons
  return BrainState(
      neurons=init_neuron_state(config, batch),
      theta_N=jnp.zeros((n,), jnp.float32),
      rate_N=jnp.full((n,), config.target_rate, jnp.float32),
      thal_gate_B=jnp.ones((batch,), jnp.float32),
      bg_gate_B=jnp.ones((batch,), jnp.float32),
      tokens=jnp.zeros((), jnp.int32),
      slow_BxNr=jnp.zeros((batch, config.read_neurons) if config.readout_slow_decay else (0, 0),
                          jnp.float32),
  )


def inference_params(params: Params, dtype=jnp.bfloat16) -> Params:
  """params with the dense token weights (w_in, embed, w_out) stored in `dtype`, for
  generation and evaluation: a step reads all of them once per token (at B = 1 about
  half of its bytes besides the tiles), so bfloat16 halves that traffic. The dots still
  accumulate in float32; the tiles keep their dtype. Train with the float32 originals."""
  return params._replace(w_in=params.w_in.astype(dtype), embed=params.embed.astype(dtype),
                         w_out=params.w_out.astype(dtype))


def init(config: BrainConfig, key: jax.Array, batch: int = 1) -> tuple[Params, BrainState]:
  """Fresh parameters and state for `batch` streams. Deterministic in `key`."""
  return init_params(config, key), init_state(config, batch)


def _range_mask_N(n: int, start: int, stop: int) -> jax.Array:
  """[N] bool mask of neurons [start, stop) (a mask, not a slice: see `cognitive_step`)."""
  idx_N = jnp.arange(n)
  return (idx_N >= start) & (idx_N < stop)


def _range_mean_N(n: int, start: int, stop: int) -> jax.Array:
  """[N] weights that average neurons [start, stop)."""
  return _range_mask_N(n, start, stop).astype(jnp.float32) / (stop - start)


def _bg_halves(config: BrainConfig) -> tuple[tuple[int, int], tuple[int, int]] | None:
  """Neuron ranges of the basal ganglia's Go and No-Go halves (None without the area)."""
  if "basal_ganglia" not in config.area_names:
    return None
  sl = config.area_slice("basal_ganglia")
  half = (sl.stop - sl.start) // 2
  return (sl.start, sl.start + half), (sl.start + half, sl.stop)


def _tick_groups_N(config: BrainConfig, conn: Connectivity) -> tuple[jax.Array, int]:
  """The groups whose spikes the tick counts: ([N] group of each neuron, G). Group a is
  area a, except the basal ganglia's second (No-Go) half, which is group A (G = A + 1;
  G = A without that area)."""
  n_areas = len(config.areas)
  halves = _bg_halves(config)
  if halves is None:
    return conn.area_N.astype(jnp.int32), n_areas
  nogo_N = _range_mask_N(config.num_neurons, *halves[1])
  return jnp.where(nogo_N, n_areas, conn.area_N).astype(jnp.int32), n_areas + 1


def bg_trace_means(config: BrainConfig, tr_BxN: jax.Array) -> jax.Array:
  """[B, 2]: mean trace of the basal ganglia's Go and No-Go halves (zeros without it)."""
  halves = _bg_halves(config)
  if halves is None:
    return jnp.zeros((tr_BxN.shape[0], 2), jnp.float32)
  n = tr_BxN.shape[-1]
  return tr_BxN @ jnp.stack([_range_mean_N(n, *h) for h in halves], axis=1)


def bg_gate_from_means(go_nogo_Bx2: jax.Array) -> jax.Array:
  """Go vs No-Go mean traces -> [B] gate in (0, 2)."""
  go, nogo = go_nogo_Bx2[:, 0], go_nogo_Bx2[:, 1]
  return 2.0 * jax.nn.sigmoid(BG_GATE_SLOPE * (go - nogo) / (go + nogo + 1e-3))


def thalamic_gate(config: BrainConfig, drive_BxNin: jax.Array, i_BxN: jax.Array) -> jax.Array:
  """Signal-to-noise of the token drive against ongoing thalamic current: [B] in [0.5, 1]."""
  if "thalamus" not in config.area_names:
    return jnp.ones(drive_BxNin.shape[:1], jnp.float32)
  sl = config.area_slice("thalamus")
  signal = jnp.sqrt(jnp.mean(jnp.square(drive_BxNin[:, sl]), axis=-1))
  noise = jnp.sqrt(jnp.mean(jnp.square(i_BxN[:, sl].astype(jnp.float32)), axis=-1))
  snr = signal / (noise + 1e-3)
  return 0.5 + 0.5 * snr / (1.0 + snr)


def basal_ganglia_gate(config: BrainConfig, tr_BxN: jax.Array) -> jax.Array:
  """Go (first half of the basal ganglia) vs No-Go (second half) traces -> [B] gate in (0, 2)."""
  if _bg_halves(config) is None:
    return jnp.ones(tr_BxN.shape[:1], jnp.float32)
  return bg_gate_from_means(bg_trace_means(config, tr_BxN))


def spike_count_dtype(config: BrainConfig):
  """The dtype of a token's per-neuron spike counts: bfloat16 (exact for whole numbers up
  to 256) while a token has at most 256 ticks, else float32. (int8 counts measured slower
  in the Pallas tick on an H200: 4,013 vs 3,921 us per B = 2,048 step, docs/BENCHMARKS.md.)"""
  return jnp.dtype(jnp.bfloat16) if config.ticks_per_token <= 256 else jnp.dtype(jnp.float32)


class _Acc(NamedTuple):
  """Per-token sums carried through the ticks: read sums in float32, the e-prop factor in
  bfloat16, spike counts in `spike_count_dtype` (exact: counts <= ticks)."""

  read_BxN: jax.Array
  post_BxN: jax.Array
  spikes_BxN: jax.Array


@functools.partial(jax.jit, static_argnames=("config", "collect", "raster_stride"))
def cognitive_step(params: Params, state: BrainState, token_ids_B: jax.Array, config: BrainConfig,
                   collect: bool = True, raster_stride: int = 0
                   ) -> tuple[BrainState, jax.Array, StepAux]:
  """One token = one five-phase cognitive cycle.

  Args:
    params, state: as from `init`.
    token_ids_B: int token of each stream, in [0, vocab_size).
    config: static BrainConfig.
    collect: accumulate the plasticity factors (pre/post/spike counts); off saves work.
    raster_stride: >0 records stream 0's spikes of every `raster_stride`-th neuron per tick.
  Returns:
    (new state, logits_BxV, StepAux).

  Inside the tick loop every [B, N] operation is elementwise or a reduction over all N
  (areas and gates select neurons by masks, never by slices): with the neurons split
  over devices (`sharding`, 'model' axis) a tick then exchanges only the spikes (the
  gather of pre blocks in `ops.propagate`) and a few [B] sums.
  """
  conn = params.conn
  table = phase_table(config, conn)
  n, n_in = config.num_neurons, config.input_size
  broca = config.area_slice(config.readout_area)
  bsz = token_ids_B.shape[0]

  x_BxD = params.embed[token_ids_B]
  drive_BxNin = readout.weights_dot(x_BxD, params.w_in, readout.matmul_dtype(config))
  thal_gate_B = thalamic_gate(config, drive_BxNin, state.neurons.i)
  # The drive is one of the tick's input currents: stored in `config.current_dtype`.
  drive_BxN = jnp.pad(drive_BxNin * thal_gate_B[:, None], ((0, 0), (0, n - n_in))
                      ).astype(config.current_dtype)
  input_gain_PxN = jnp.pad(table.input_gain_PxNin, ((0, 0), (0, n - n_in)))
  broca_N = _range_mask_N(n, broca.start, broca.stop)
  # Each phase's per-neuron rows for the neuron tick (`neuron_update.TICK_VEC_ROWS`):
  # theta, gate mask (Broca), drive gain, read weight, learn weight, sign.
  # The read weight is zero outside the read areas: their read sums are never used, and
  # the Pallas tick neither loads nor stores the read sum of a block with a zero weight.
  n_phases = input_gain_PxN.shape[0]
  per_neuron = lambda x_N: jnp.broadcast_to(x_N, (n_phases, n))
  read_PxN = table.read_P[:, None] * readout.read_mask_N(config)[None, :].astype(np.float32)
  vec_Px6xN = jnp.stack([per_neuron(state.theta_N), per_neuron(broca_N.astype(jnp.float32)),
                         input_gain_PxN, read_PxN,
                         table.learn_PxN, per_neuron(conn.sign_N.astype(jnp.float32))], axis=1)
  # The tick propagates signed spikes q = s * sign (the neuron tick writes them, in the
  # weights' dtype or int8: `BrainConfig.spike_dtype`) and counts its spikes per area and
  # basal-ganglia half (groups).
  signed_dtype = params.tiles.dtype if config.spike_dtype == "auto" else jnp.dtype(jnp.int8)
  group_N, n_groups = _tick_groups_N(config, conn)
  # Laid out once per token (with Pallas: padded, with the groups and each kernel block's
  # flags); a tick indexes them by its phase.
  rows_P = ops.tick_rows(vec_Px6xN, group_N, n_groups, batch=bsz, tile=config.tile,
                         implementation=config.implementation, fuse=config.fuse_propagation)
  n_areas = len(config.areas)
  area_sizes_A = jnp.asarray(config.area_sizes, jnp.float32)
  halves = _bg_halves(config)
  has_bg = halves is not None
  # [G, A]: group counts -> area counts (both basal-ganglia halves count for that area).
  group_area_GxA = np.eye(n_groups, n_areas, dtype=np.float32)
  if has_bg:
    bg = config.area_names.index("basal_ganglia")
    group_area_GxA[n_areas, bg] = 1.0
    half_sizes_2 = jnp.asarray([stop - start for start, stop in halves], jnp.float32)
  a_t = config.decay(config.tau_trace_ms)

  def tick(carry, p):
    ns, q_BxN, go_nogo_Bx2, acc, bg_gate_B = carry
    # This tick's phase row (a dynamic index into the [P, ...] table: one scan over all
    # ticks of the token, no per-phase loop and no conditional).
    gain_RxK, bg_on = table.gain_PxRxK[p], table.bg_gate_P[p]
    gate_B = (jnp.where(bg_on > 0, bg_gate_from_means(go_nogo_Bx2), 1.0) if has_bg
              else jnp.ones((bsz,), jnp.float32))
    # The propagation of the last tick's spikes, input current, neuron update and the
    # token's sums (with Pallas: two kernels, or one with config.fuse_propagation; one ALIF
    # stream goes event-driven, the event kernel's K partial sums added up by the tick).
    ns, q_BxN, read_BxN, post_BxN, spikes_BxN, counts_BxG = neuron_tick(
        config, ns, Propagation(q_BxN, params.tiles, conn.col_RxK, gain_RxK), drive_BxN, gate_B,
        rows_P.at(p), acc.read_BxN,
        acc.post_BxN if collect else None, acc.spikes_BxN if collect else None,
        signed_dtype=signed_dtype, group_N=group_N, n_groups=n_groups, write_s=False)
    acc = acc._replace(read_BxN=read_BxN)
    if collect:
      acc = acc._replace(post_BxN=post_BxN, spikes_BxN=spikes_BxN)
    # Spike counts per area and basal-ganglia half (exact; [G] -> [A] is a static sum). The
    # halves' mean traces follow tr <- a_t tr + s without reading tr.
    area_rate_A = jnp.dot(jnp.mean(counts_BxG, axis=0), group_area_GxA,
                          precision=jax.lax.Precision.HIGHEST) / area_sizes_A
    if has_bg:
      go_nogo_Bx2 = a_t * go_nogo_Bx2 + jnp.stack(
          [counts_BxG[:, bg], counts_BxG[:, n_areas]], axis=1) / half_sizes_2
    # ns.s is not written per tick (write_s=False): this tick's spikes are |q|.
    raster = (jnp.abs(q_BxN[0, ::raster_stride]).astype(ns.s.dtype) if raster_stride
              else jnp.zeros((0,), ns.s.dtype))
    return (ns, q_BxN, go_nogo_Bx2, acc, jnp.where(bg_on > 0, gate_B, bg_gate_B)), (
        area_rate_A, raster)

  z = lambda *s: jnp.zeros(s, jnp.float32)
  h = lambda *s: jnp.zeros(s, jnp.bfloat16)
  if collect:
    acc0 = _Acc(z(bsz, n), h(bsz, n), jnp.zeros((bsz, n), spike_count_dtype(config)))
  else:
    acc0 = _Acc(z(bsz, n), h(0, 0), h(0, 0))
  phase_T = phase_of_tick(config)
  # Unrolled (config.scan_unroll) at B = 1, where each loop iteration's fixed cost (the
  # loop predicate goes to the host) is a large part of a tick.
  q0_BxN = signed_spikes(state.neurons.s, conn.sign_N, signed_dtype)
  carry0 = (state.neurons, q0_BxN, bg_trace_means(config, state.neurons.tr), acc0,
            state.bg_gate_B)
  (ns, q_BxN, _, acc, bg_gate_B), (rates_TxA, raster_TxS) = jax.lax.scan(
      tick, carry0, jnp.asarray(phase_T, jnp.int32),
      unroll=config.scan_unroll(bsz, jax.default_backend()))
  # The last tick's spikes (the ticks do not write s): s = q * sign, exact.
  ns = ns._replace(s=(q_BxN * conn.sign_N).astype(jnp.float32))
  # Mean rate of each phase: a static [P, T] averaging matrix over the ticks.
  phase_avg_PxT = (np.arange(len(config.phases))[:, None] == phase_T[None, :]).astype(np.float32)
  phase_avg_PxT /= phase_avg_PxT.sum(axis=1, keepdims=True)
  # HIGHEST: on a GPU a float32 dot runs at TF32 by default (10-bit mantissa), which made
  # these rates differ by 2e-4 between two compilations of the same step (the unrolled tick
  # loop fuses the dot into a reduction in full float32). [P, T] x [T, A]: free either way.
  rates_PxA = jnp.dot(jnp.asarray(phase_avg_PxT), rates_TxA, precision=jax.lax.Precision.HIGHEST)

  # The ticks that read (each neuron's ticks that learn): fixed by the phase table, so
  # summed here once rather than carried through the ticks (exact: whole numbers).
  ticks_P = table.ticks_P.astype(jnp.float32)
  read_ticks = jnp.dot(ticks_P, table.read_P, precision=jax.lax.Precision.HIGHEST)
  features_BxNr = readout.read_areas(config, acc.read_BxN) / jnp.maximum(read_ticks, 1.0)
  features_BxNr, slow_BxNr = readout.with_slow(config, features_BxNr, state.slow_BxNr)
  logits_BxV = readout.logits(params.embed, params.w_out, params.b_out, features_BxNr,
                              readout.matmul_dtype(config))
  if collect:
    learn_ticks_N = jnp.dot(ticks_P, table.learn_PxN, precision=jax.lax.Precision.HIGHEST)
    denom_N = jnp.maximum(learn_ticks_N, 1.0)
    pre_BxN = ns.tr.astype(jnp.float32)
    post_BxN = acc.post_BxN.astype(jnp.float32) / denom_N
    spikes_BxN = acc.spikes_BxN.astype(jnp.float32)
  else:
    pre_BxN = post_BxN = spikes_BxN = jnp.zeros((0, 0), jnp.float32)
  if not raster_stride:
    raster_TxS = None
  new_state = state._replace(neurons=ns, thal_gate_B=thal_gate_B, bg_gate_B=bg_gate_B,
                             tokens=state.tokens + 1, slow_BxNr=slow_BxNr)
  aux = StepAux(features_BxNr=features_BxNr, rates_PxA=rates_PxA, pre_BxN=pre_BxN,
                post_BxN=post_BxN, spikes_BxN=spikes_BxN, raster_TxS=raster_TxS)
  return new_state, logits_BxV, aux


@functools.partial(jax.jit, static_argnames=("config",))
def run_sequence(params: Params, state: BrainState, tokens_BxL: jax.Array, config: BrainConfig
                 ) -> tuple[BrainState, jax.Array, jax.Array]:
  """Scans `cognitive_step` over L tokens.

  Returns (state, logits_BxLxV, rates_LxPxA). For long sequences and large vocabularies
  prefer a loss computed inside the scan (see `train.sequence_loss`), which never holds
  B x L x V logits.
  """
  def body(st, tok_B):
    st, logits_BxV, aux = cognitive_step(params, st, tok_B, config, collect=False)
    return st, (logits_BxV, aux.rates_PxA)

  state, (logits_LxBxV, rates_LxPxA) = jax.lax.scan(body, state, tokens_BxL.T)
  return state, jnp.swapaxes(logits_LxBxV, 0, 1), rates_LxPxA
