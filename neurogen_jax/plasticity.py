"""The brain's local learning rules, applied once per token on the existing tiles.

Every weight update is factorised: dW[r,k] = sum_b pre_b[col[r,k]]^T post_b[r] / B, a
GEMM on the tiles, never a dense N x N matrix. Factors come from the token's `StepAux`
(pre-synaptic traces, spike counts, surrogate pseudo-derivatives). `apply` forms the
factors and scalars; the per-synapse part of every rule (the GEMMs, tagging and capture,
scaling, replay's update, the clip, the statistics, the stochastic rounding to bf16) is
one pass over the tiles, `ops.synapse_update` (a Pallas kernel or its XLA reference).

Mechanisms (each switched by a `PlasticityConfig` flag, each reported in the stats):
1. STDP: LTP = pre trace x post spikes, LTD = pre spikes x post trace (ratio `stdp_ltd`).
2. Dopamine: reward r = -loss per stream; dopamine = r - running mean of r, a reward
   prediction error of both signs, gating the Hebbian eligibility (pre trace x post rate
   above its running mean: the three-factor rule).
3. Tagging & capture: updates land in an early component that decays; strong
   coincidences set tags; when the protein signal (filtered positive dopamine) crosses a
   threshold, tagged early weight is captured into the stable late component.
4. Homeostasis: thresholds move toward the target rate; slow multiplicative synaptic
   scaling per post-synaptic neuron.
5. Replay: the hippocampus keeps recent (Broca features, pre/post factors, target)
   episodes and re-presents a few every `replay_every` tokens to the readout and pathways.
Plus e-prop: each neuron's learning signal is the output error broadcast through a fixed
random feedback matrix (`eprop_feedback="random"`), or, for the readout area, the readout's
own gradient with respect to its input features (symmetric e-prop, still local in time:
no gradient flows through the spikes), the other areas keeping the random signal
(`"symmetric"`) or getting none (`"readout"`, the default: with the input side trained by
Adam, the random signals' noise measured harmful, docs/LEARNING.md); `readout_also` adds
read areas, which get the readout's signal too. With `eprop_hops` > 0 the read areas'
signal is sent back through the synaptic weights to the areas that project into them, and
on, one pathway layer per hop (backprop in space, still local in time); `eprop_areas`
further limits which areas get a signal. With the pseudo-derivative and pre-synaptic
traces the signal trains the pathway tiles (here, per token) and gives a gradient estimate
for the input projection and the input side of the embedding, which `apply` returns
(`InputGrads`) for the optimizer: those two are trained by optax like the readout, not by
a rate of their own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import ops, readout
from neurogen_jax.config import BrainConfig
from neurogen_jax.connectivity import pathway_gains
from neurogen_jax.pallas import plasticity as pallas_plasticity

STAT_KEYS = ("dopamine", "reward_mean", "protein", "tag_fraction", "captured", "update_norm",
             "theta_mean", "tile_mean", "replayed")


@dataclasses.dataclass(frozen=True)
class PlasticityConfig:
  """Switches and rates of the local rules (static under jit).

  Learning rates are in units of the initial mean weight magnitude per token, so the
  same numbers work at every brain size.
  """

  eprop: bool = True
  stdp: bool = True
  dopamine: bool = True
  tagging: bool = True
  homeostasis: bool = True
  replay: bool = True
  eprop_lr: float = 3.0
  eprop_feedback: Literal["random", "symmetric", "readout"] = "readout"
  eprop_areas: tuple[str, ...] | None = None  # None: every area gets a learning signal
  # With "readout" feedback: send the readout area's signal back through the tiles this many
  # pathway layers (0: the readout area alone learns by e-prop); see `learning_signal`.
  eprop_hops: int = 0
  eprop_hop_scale: float = 1.0  # multiplies the signal of every area reached by a hop
  stdp_lr: float = 0.01
  stdp_ltd: float = 1.05
  dopamine_lr: float = 0.05
  reward_decay: float = 0.99
  tag_threshold: float = 3.0      # |dW| above this multiple of the mean |dW| sets a tag
  tag_decay: float = 0.8
  early_decay: float = 0.995
  protein_decay: float = 0.9
  capture_threshold: float = 0.05
  capture_rate: float = 0.5
  homeostasis_lr: float = 0.02
  scaling_lr: float = 1e-3
  normalization_rate: float = 0.1
  rate_decay: float = 0.99
  rate_band: tuple[float, float] = (0.002, 0.08)
  max_weight_factor: float = 20.0
  replay_size: int = 256
  replay_every: int = 16
  replay_batch: int = 8
  replay_lr: float = 0.01
  feedback_seed: int = 17
  # dtype of the pre/post factors of the tile GEMMs (the sum over streams stays float32):
  # bfloat16 halves their traffic and runs the Pallas kernels on bf16 tensor cores;
  # float32 (TF32 on GPU) for the exact factors.
  factor_dtype: str = "bfloat16"

  def __post_init__(self):
    if self.factor_dtype not in ("bfloat16", "float32"):
      raise ValueError(f"factor_dtype must be 'bfloat16' or 'float32', got {self.factor_dtype!r}")
    if self.eprop_feedback not in ("random", "symmetric", "readout"):
      raise ValueError(f"eprop_feedback must be 'random', 'symmetric' or 'readout', got "
                       f"{self.eprop_feedback!r}")
    if self.eprop_hops < 0 or (self.eprop_hops and self.eprop_feedback != "readout"):
      raise ValueError(f"eprop_hops must be >= 0 and needs eprop_feedback='readout' (the "
                       f"other modes give every area a random signal already), got "
                       f"eprop_hops={self.eprop_hops} with {self.eprop_feedback!r}")
    if self.eprop_areas is not None and (isinstance(self.eprop_areas, str)
                                         or not all(isinstance(a, str) for a in self.eprop_areas)):
      raise ValueError(f"eprop_areas must be a tuple of area names (or None for all), got "
                       f"{self.eprop_areas!r}")

  @property
  def uses_random_feedback(self) -> bool:
    """Whether a learning signal (e-prop, or replay's) is formed with the random matrix."""
    return (self.eprop or self.replay) and self.eprop_feedback != "readout"

  @property
  def any_brain_rule(self) -> bool:
    """Whether the step must collect the per-neuron plasticity factors."""
    return self.eprop or self.stdp or self.dopamine or self.tagging or self.replay or self.homeostasis

  def replace(self, **kw) -> "PlasticityConfig":
    return dataclasses.replace(self, **kw)


class PlasticState(NamedTuple):
  """Learning state (shared by streams).

  reward_mean, protein: scalars. early_W / tag_W: tiles-shaped (empty when tagging off).
  feedback_DxN: fixed random e-prop feedback (empty when no rule uses it: e-prop and replay
    off, or `eprop_feedback="readout"`).
  replay_*: hippocampal ring buffer of M episodes (empty when replay off).
  update_scale: running mean |dW| (the tag threshold's unit), from earlier tokens.
  in_mean_2xN: each neuron's mean excitatory / inhibitory incoming magnitude after the
    last token (for synaptic scaling).
  count: tokens seen.
  The last two lag one token so that the whole per-synapse update is one elementwise pass
  (no reduction over the 80M synapses between the GEMMs and the write-back).
  """

  reward_mean: jax.Array
  protein: jax.Array
  early_W: jax.Array
  tag_W: jax.Array
  feedback_DxN: jax.Array
  replay_feat_MxNr: jax.Array
  replay_pre_MxN: jax.Array
  replay_post_MxN: jax.Array
  replay_target_M: jax.Array
  replay_filled: jax.Array
  update_scale: jax.Array
  in_mean_2xN: jax.Array
  count: jax.Array


class InputGrads(NamedTuple):
  """One token's e-prop gradient estimate for the input side, summed over the local streams
  and divided by their number (a mean, like the readout's gradient).

  w_in_DxNin: for the input projection. embed_rows_BxD, tokens_B: for the embedding rows of
  the tokens just read (row b goes to `tokens_B[b]`; rows are already divided by B).
  """

  w_in_DxNin: jax.Array
  embed_rows_BxD: jax.Array
  tokens_B: jax.Array


def weight_unit(config: BrainConfig) -> float:
  """Mean initial tile magnitude (see connectivity.init_tiles): the unit of the rates."""
  return 0.8 * config.weight_scale / (config.fan_in_tiles * config.tile * config.target_rate)


def init_plastic_state(config: BrainConfig, pcfg: PlasticityConfig) -> PlasticState:
  r, k, t = config.num_blocks, config.fan_in_tiles, config.tile
  n, nr, d = config.num_neurons, config.readout_size, config.embedding_dim
  tiles_shape = (r, k, t, t) if pcfg.tagging else (0, 0, 0, 0)
  fb = (0, 0)
  feedback = jnp.zeros(fb, jnp.bfloat16)
  if pcfg.uses_random_feedback:
    feedback = (jax.random.normal(jax.random.PRNGKey(pcfg.feedback_seed), (d, n), jnp.float32)
                / np.sqrt(d)).astype(jnp.bfloat16)
  m = pcfg.replay_size if pcfg.replay else 0
  return PlasticState(
      reward_mean=jnp.zeros((), jnp.float32),
      protein=jnp.zeros((), jnp.float32),
      early_W=jnp.zeros(tiles_shape, config.weight_dtype),
      tag_W=jnp.zeros(tiles_shape, jnp.bfloat16),
      feedback_DxN=feedback,
      replay_feat_MxNr=jnp.zeros((m, nr), jnp.bfloat16),
      replay_pre_MxN=jnp.zeros((m, n if m else 0), jnp.bfloat16),
      replay_post_MxN=jnp.zeros((m, n if m else 0), jnp.bfloat16),
      replay_target_M=jnp.zeros((m,), jnp.int32),
      replay_filled=jnp.zeros((), jnp.int32),
      update_scale=jnp.zeros((), jnp.float32),
      in_mean_2xN=jnp.stack([jnp.full((n,), weight_unit(config), jnp.float32),
                             jnp.full((n,), weight_unit(config) * config.inhibitory_scale, jnp.float32)]),
      count=jnp.zeros((), jnp.int32),
  )


def _round_seed(pcfg: PlasticityConfig, count: jax.Array) -> jax.Array:
  """The int32 seed of one token's stochastic rounding of the weights."""
  return pallas_plasticity.hash32(count.astype(jnp.int32) + jnp.int32(pcfg.feedback_seed + 2))


def empty_stats(length: int) -> dict:
  return {k: jnp.zeros((length,), jnp.float32) for k in STAT_KEYS}


def tile_gain_sign(config: BrainConfig, pathway_RxK: jax.Array) -> jax.Array:
  """[R, K] mean effective gain of each tile over the phases (sign included)."""
  return jnp.asarray(pathway_gains(config).mean(axis=0))[pathway_RxK]


def output_error(embed_VxD: jax.Array, logits_BxV: jax.Array, targets_B: jax.Array) -> jax.Array:
  """dCE/dh for the readout hidden vector h (logits = h @ E^T / sqrt(D) + b)."""
  p_BxV = jax.nn.softmax(logits_BxV, axis=-1)
  return (p_BxV @ embed_VxD - embed_VxD[targets_B]) * (1.0 / np.sqrt(embed_VxD.shape[1]))


def hop_areas(config: BrainConfig, hops: int) -> list[tuple[str, ...]]:
  """The areas `learning_signal` reaches at each of `hops` pathway layers back from the
  read areas: those with a pathway into the layer before, not reached yet."""
  reached, frontier, layers = set(config.readout_areas), set(config.readout_areas), []
  for _ in range(hops):
    new = {p.source for p in config.pathways if p.target in frontier} - reached
    if not new:
      break
    layers.append(tuple(a for a in config.area_names if a in new))
    reached |= new
    frontier = new
  return layers


def _back_through_tiles(config: BrainConfig, params, delta_BxN: jax.Array) -> jax.Array:
  """The transpose of the synaptic current: dI/d(pre)^T delta, [B, N] float32.

  With I_post = sum_pre gain x W x sign_pre x pre (phase gains averaged, as the tile
  updates take them), delta = dCE/dI_post gives dCE/d(pre) of every presynaptic neuron.
  """
  gain_RxK = tile_gain_sign(config, params.conn.pathway_RxK)
  sign_N = params.conn.sign_N.astype(params.tiles.dtype)

  def current(pre_BxN):
    return ops.propagate(pre_BxN * sign_N, params.tiles, params.conn.col_RxK, gain_RxK,
                         config.implementation, events_variant=config.events_variant,
                         backend=config.propagation_backend)

  _, vjp = jax.vjp(current, jnp.zeros(delta_BxN.shape, params.tiles.dtype))
  return vjp(delta_BxN.astype(jnp.float32))[0].astype(jnp.float32)


def _per_neuron(params, x_A) -> jax.Array:
  """A per-area value x_A [A] (a static mask or scale) -> [N] float32, each neuron its area's."""
  return jnp.asarray(x_A, jnp.float32)[params.conn.area_N]


def learning_signal(config: BrainConfig, pcfg: PlasticityConfig, params, feedback_DxN: jax.Array,
                    features_BxNr: jax.Array, logits_BxV: jax.Array, targets_B: jax.Array,
                    post_BxN: jax.Array | None = None) -> jax.Array:
  """Each neuron's e-prop learning signal L [B, N] for one token (no gradient flows back).

  random: L = err @ feedback, err the output error (`output_error`) broadcast through a
  fixed random D x N matrix. symmetric: the neurons of the read areas (`readout_area` and
  `readout_also`) get the readout's exact gradient dCE/dfeature of each stream instead (the
  readout is one layer, so this is local in time); the other areas keep the random one.
  readout: as symmetric, and the other areas get no signal, unless `eprop_hops` > 0: then
  the signal goes back through the synaptic weights, layer by layer (`hop_areas`): a
  neuron that projects into signalled neurons gets L_j = sign_j sum_i gain W_ij L_i psi_i
  over them (psi = `post_BxN`, the pseudo-derivatives): backprop in space through the
  pathways, still local in time (times `eprop_hop_scale`, which the next hop then carries
  on). `eprop_areas` zeroes the signal outside the named areas.
  """
  if pcfg.eprop_feedback == "readout":
    learn_BxN = jnp.zeros((targets_B.shape[0], config.num_neurons), jnp.float32)
  else:
    err_BxD = output_error(params.embed, logits_BxV, targets_B)
    learn_BxN = err_BxD @ feedback_DxN.astype(jnp.float32)
  if pcfg.eprop_feedback in ("symmetric", "readout"):
    def ce_sum(f_BxNr):
      lg = readout.logits(params.embed, params.w_out, params.b_out, f_BxNr,
                          readout.matmul_dtype(config))
      return jnp.sum(readout.cross_entropy(lg, targets_B))
    g_BxNr = readout.fold_slow(config, jax.grad(ce_sum)(features_BxNr))
    learn_BxN = readout.place_read_areas(config, learn_BxN, g_BxNr)
  if pcfg.eprop_hops:
    if post_BxN is None:
      raise ValueError("eprop_hops > 0 needs post_BxN (the pseudo-derivatives) to send the "
                       "signal back through the tiles")
    area_names = np.asarray(config.area_names)
    frontier_A = np.isin(area_names, config.readout_areas)
    for layer in hop_areas(config, pcfg.eprop_hops):
      frontier_N = _per_neuron(params, frontier_A)
      back_BxN = _back_through_tiles(config, params, learn_BxN * post_BxN * frontier_N)
      frontier_A = np.isin(area_names, layer)
      learn_BxN = learn_BxN + back_BxN * _per_neuron(params, frontier_A * pcfg.eprop_hop_scale)
  if pcfg.eprop_areas is not None:
    unknown = [a for a in pcfg.eprop_areas if a not in config.area_names]
    if unknown:
      raise ValueError(f"eprop_areas names {unknown}, not areas of this brain {config.area_names}")
    keep_A = np.isin(config.area_names, pcfg.eprop_areas)
    learn_BxN = learn_BxN * _per_neuron(params, keep_A)
  return jax.lax.stop_gradient(learn_BxN)


def _eprop_group(config, params, learn_BxN, pre_BxN, post_BxN, lr, factor_dtype):
  """The e-prop update as a factor group (pre, post, scale_RxK) of `ops.synapse_update`:
  dW = -lr * sum_b (sign*pre)^T (L * psi) * gain / B for learning signals L [B, N] (the two
  factors in `factor_dtype`, the sum in float32; gain and -lr / B in the per-tile scale)."""
  pre_signed = (pre_BxN * params.conn.sign_N).astype(factor_dtype)
  scale_RxK = -(lr / pre_BxN.shape[0]) * tile_gain_sign(config, params.conn.pathway_RxK)
  return pre_signed, (learn_BxN * post_BxN).astype(factor_dtype), scale_RxK


def _group_outer(config, params, groups) -> jax.Array:
  """sum_g scale_g[r, k] * tile_outer(pre_g, post_g) -> [R, K, T, T] float32 (None: 1)."""
  total = jnp.zeros(params.tiles.shape, jnp.float32)
  for pre, post, scale in groups:
    outer = ops.tile_outer(pre, post, params.conn.col_RxK, config.tile, config.implementation)
    total = total + (outer if scale is None else scale[:, :, None, None] * outer)
  return total


def _across(x: jax.Array, axis_name: str | None) -> jax.Array:
  """x averaged over the devices that split the streams (x itself when none do)."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _stream_mean(x_Bx: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean over all streams (axis 0)."""
  return _across(jnp.mean(x_Bx, axis=0), axis_name)


def _stream_row(x_BxF: jax.Array, b: jax.Array, axis_name: str | None) -> jax.Array:
  """Row `b` of the global stream batch, as a one-hot contraction: with the streams split
  over devices (SPMD or `axis_name`), only the [F] row crosses devices, never all of [B, F]."""
  bsz = x_BxF.shape[0]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * bsz
  row_F = jnp.tensordot((first + jnp.arange(bsz) == b).astype(x_BxF.dtype), x_BxF, 1)
  return row_F if axis_name is None else jax.lax.psum(row_F, axis_name)


def apply(config: BrainConfig, pcfg: PlasticityConfig, params, bstate, pstate: PlasticState, aux,
          logits_BxV, targets_B, ce_B, tokens_B, axis_name: str | None = None):
  """One token's local learning.

  Returns (params, bstate, pstate, stats dict of scalars, input_grads): `InputGrads`, the
  e-prop gradient estimate for w_in and the embedding rows (None when e-prop is off),
  for the caller's optimizer; the tiles, thresholds and the rest are updated here.

  The rules' per-synapse part (the factorised GEMMs, tagging and capture, scaling, replay's
  update, the clip, the statistics and the rounding) is one `ops.synapse_update` pass over
  the tiles; this function forms its factors and scalars.

  axis_name: when the streams are split over devices by `jax.pmap`/`shard_map`, the
  mapped axis; every mean over streams (and the tile update) is then taken over all of
  them. None when B is the whole batch (also under jit with sharded inputs).
  """
  unit = weight_unit(config)
  bsz = targets_B.shape[0]
  streams = bsz if axis_name is None else bsz * jax.lax.axis_size(axis_name)
  ticks = config.ticks_per_token
  stats = {k: jnp.zeros((), jnp.float32) for k in STAT_KEYS}
  # (pre_BxN, post_BxN, scale_RxK or None): dW = sum_g scale_g * tile_outer(pre_g, post_g)
  groups = []

  # 2. Dopamine: reward prediction error of each stream.
  reward_B = -ce_B
  dopamine_B = reward_B - pstate.reward_mean
  batch_reward = _stream_mean(reward_B, axis_name)
  reward_mean = pstate.reward_mean * pcfg.reward_decay + (1 - pcfg.reward_decay) * batch_reward
  # First token: no baseline yet, start it at the reward itself.
  reward_mean = jnp.where(pstate.count == 0, batch_reward, reward_mean)
  dopamine_B = jnp.where(pstate.count == 0, 0.0, dopamine_B)
  stats["dopamine"] = _stream_mean(dopamine_B, axis_name)
  stats["reward_mean"] = reward_mean

  input_grads = None
  if pcfg.eprop:
    learn_BxN = learning_signal(config, pcfg, params, pstate.feedback_DxN, aux.features_BxNr,
                                logits_BxV, targets_B, aux.post_BxN)
    groups.append(_eprop_group(config, params, learn_BxN, aux.pre_BxN, aux.post_BxN,
                               pcfg.eprop_lr * unit, pcfg.factor_dtype))
    # Input projection and the input side of the embedding: the same signal, as a gradient
    # estimate for the optimizer (eligibility = token drive x pseudo-derivative).
    g_BxNin = (learn_BxN * aux.post_BxN)[:, :config.input_size]
    x_BxD = params.embed[tokens_B] * bstate.thal_gate_B[:, None]
    dot = functools.partial(readout.weights_dot, dtype=readout.matmul_dtype(config))
    rows_BxD = dot(g_BxNin, params.w_in.T) * bstate.thal_gate_B[:, None]
    input_grads = InputGrads(w_in_DxNin=dot(x_BxD.T, g_BxNin) / bsz,
                             embed_rows_BxD=rows_BxD / bsz, tokens_B=tokens_B)

  # 1 + 2. Hebbian family: STDP (LTP - LTD) and dopamine-gated LTP, two unscaled factor
  # groups (the kernel sums them into one accumulator, no [B*parts, N] stack is formed).
  # LTP and the dopamine term share the pre factor (the pre trace; dopamine is one scalar
  # per stream), so they are one group: pre x (LTP post + dopamine x eligibility post).
  rate_BxN = aux.spikes_BxN / ticks
  as_factor = lambda x: x.astype(pcfg.factor_dtype)
  if pcfg.stdp or pcfg.dopamine:
    ltp_BxN = pcfg.stdp_lr * unit * rate_BxN if pcfg.stdp else 0.0
    if pcfg.dopamine:
      # Eligibility = pre trace x post rate relative to its running mean (zero-mean, so a
      # reward that keeps rising while the readout learns does not grow all weights).
      ltp_BxN = ltp_BxN + (pcfg.dopamine_lr * unit) * dopamine_B[:, None] * (rate_BxN - bstate.rate_N)
    groups.append((as_factor(aux.pre_BxN), as_factor(ltp_BxN / bsz), None))
  if pcfg.stdp:  # LTD: pre spikes x post trace
    groups.append((as_factor(rate_BxN),
                   as_factor((-pcfg.stdp_lr * pcfg.stdp_ltd * unit / bsz) * aux.pre_BxN), None))
  d_W = None
  if axis_name is not None and groups:
    # Split streams: the token's dW must be the mean over all of them before the
    # elementwise rules (tags, capture), so it is formed and reduced here, once per token.
    d_W, groups = _across(_group_outer(config, params, groups), axis_name), []

  # 3. Tagging and capture: the protein signal and the tag threshold (the rules run in
  # `ops.synapse_update`: the token's update lands in the decaying early component).
  protein = pstate.protein
  capture = jnp.zeros((), jnp.float32)
  if pcfg.tagging:
    protein = pcfg.protein_decay * protein + (1 - pcfg.protein_decay) * jnp.maximum(stats["dopamine"], 0.0)
    capture = jnp.where(protein > pcfg.capture_threshold, pcfg.capture_rate, 0.0)
  stats["protein"] = protein

  # 4. Homeostasis: thresholds toward the target rate, slow synaptic scaling.
  theta_N, rate_N = bstate.theta_N, bstate.rate_N
  if aux.spikes_BxN.size:  # factors were collected
    rate_tok_N = _stream_mean(rate_BxN, axis_name)
    rate_N = rate_N * pcfg.rate_decay + (1 - pcfg.rate_decay) * rate_tok_N
  f_2xN = None
  if pcfg.homeostasis:
    target = config.target_rate
    theta_N = jnp.clip(theta_N + pcfg.homeostasis_lr * (rate_tok_N - target) / target, -0.9, 10.0)
    # Synaptic scaling: each post neuron's mean incoming magnitude is pulled toward its
    # initial value (a conserved resource, so learning redistributes rather than grows)
    # and nudged by its rate error.
    # Excitatory and inhibitory inputs are normalised apart, so that learning cannot trade
    # one for the other and silence (or unleash) a neuron.
    targets_2 = jnp.asarray([unit, unit * config.inhibitory_scale], jnp.float32)[:, None]
    norm_2xN = (targets_2 / jnp.maximum(pstate.in_mean_2xN, 1e-12)) ** pcfg.normalization_rate
    rate_N_scale = 1.0 + pcfg.scaling_lr * jnp.clip((target - rate_N) / target, -1.0, 1.0)
    f_2xN = norm_2xN * rate_N_scale
  bstate = bstate._replace(theta_N=theta_N, rate_N=rate_N)
  stats["theta_mean"] = jnp.mean(theta_N)

  # 5. Replay: store one stream's episode; every `replay_every` tokens re-present a few.
  p_fields, direct = {}, []
  if pcfg.replay:
    m = pcfg.replay_size
    b = pstate.count % streams
    slot = pstate.count % m
    row = lambda x_BxF: _stream_row(x_BxF, b, axis_name)
    p_fields = dict(
        replay_feat_MxNr=pstate.replay_feat_MxNr.at[slot].set(row(aux.features_BxNr).astype(jnp.bfloat16)),
        replay_pre_MxN=pstate.replay_pre_MxN.at[slot].set(row(aux.pre_BxN).astype(jnp.bfloat16)),
        replay_post_MxN=pstate.replay_post_MxN.at[slot].set(row(aux.post_BxN).astype(jnp.bfloat16)),
        replay_target_M=pstate.replay_target_M.at[slot].set(row(targets_B)),
        replay_filled=jnp.minimum(pstate.replay_filled + 1, m),
    )
    do_replay = (pstate.count + 1) % pcfg.replay_every == 0
    key = jax.random.fold_in(jax.random.PRNGKey(pcfg.feedback_seed + 1), pstate.count)
    idx = jax.random.randint(key, (pcfg.replay_batch,), 0, jnp.maximum(p_fields["replay_filled"], 1))
    n = config.num_neurons

    def replay(operand):
      w_out, b_out = operand
      feat = p_fields["replay_feat_MxNr"][idx].astype(jnp.float32)
      tgt = p_fields["replay_target_M"][idx]

      def loss(w_out, b_out):
        lg = readout.logits(params.embed, w_out, b_out, feat, readout.matmul_dtype(config))
        return jnp.mean(readout.cross_entropy(lg, tgt)), lg

      (_, lg), (g_w, g_b) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(w_out, b_out)
      post = p_fields["replay_post_MxN"][idx].astype(jnp.float32)
      learn = learning_signal(config, pcfg, params._replace(w_out=w_out, b_out=b_out),
                              pstate.feedback_DxN, feat, lg, tgt, post)
      pre_r, post_r, _ = _eprop_group(config, params, learn,
                                      p_fields["replay_pre_MxN"][idx].astype(jnp.float32), post,
                                      pcfg.eprop_lr * unit, pcfg.factor_dtype)
      return w_out - pcfg.replay_lr * g_w, b_out - pcfg.replay_lr * g_b, pre_r, post_r

    def skip(operand):
      zeros = jnp.zeros((pcfg.replay_batch, n), pcfg.factor_dtype)
      return (*operand, zeros, zeros)

    w_out, b_out, pre_r, post_r = jax.lax.cond(do_replay, replay, skip, (params.w_out, params.b_out))
    params = params._replace(w_out=w_out, b_out=b_out)
    scale_r = -(pcfg.eprop_lr * unit / pcfg.replay_batch) * tile_gain_sign(config, params.conn.pathway_RxK)
    direct.append((pre_r, post_r, scale_r * do_replay))
    stats["replayed"] = do_replay.astype(jnp.float32)

  # The per-synapse pass: dW, tagging and capture, scaling, replay, clip, rounding.
  rules = ops.SynapseRules(tagging=pcfg.tagging, scaling=pcfg.homeostasis,
                           stochastic_round=params.tiles.dtype == jnp.bfloat16,
                           early_decay=pcfg.early_decay, tag_decay=pcfg.tag_decay,
                           w_max=pcfg.max_weight_factor * unit)
  exc_N = (params.conn.sign_N > 0).astype(jnp.float32)
  tiles, early, tag, sums = ops.synapse_update(
      params.tiles, pstate.early_W, pstate.tag_W, params.conn.col_RxK, exc_N, f_2xN,
      tuple(groups), tuple(direct), d_W, pcfg.tag_threshold * pstate.update_scale, capture,
      _round_seed(pcfg, pstate.count), rules, config.implementation,
      backend=config.synapse_backend)

  size = params.tiles.size
  if pcfg.tagging:
    stats["tag_fraction"] = jnp.sum(sums.tags) / size
    stats["captured"] = jnp.sum(sums.captured) / size / unit
  n_exc_R = jnp.sum(exc_N.reshape(-1, config.tile)[params.conn.col_RxK], axis=(1, 2))
  n_all = config.fan_in_tiles * config.tile
  sum_e, sum_i = jnp.sum(sums.exc, axis=(1, 2)), jnp.sum(sums.inh, axis=(1, 2))  # [R, T]
  in_mean_2xN = jnp.stack([(sum_e / jnp.maximum(n_exc_R, 1)[:, None]).reshape(-1),
                           (sum_i / jnp.maximum(n_all - n_exc_R, 1)[:, None]).reshape(-1)])
  stats["tile_mean"] = (jnp.sum(sum_e) + jnp.sum(sum_i)) / size / unit
  mean_update = jnp.sum(sums.abs_dw) / size
  update_scale = jnp.where(pstate.count == 0, mean_update, 0.9 * pstate.update_scale + 0.1 * mean_update)
  stats["update_norm"] = mean_update / unit
  params = params._replace(tiles=tiles)
  pstate = pstate._replace(reward_mean=reward_mean, protein=protein, early_W=early, tag_W=tag,
                           update_scale=update_scale, in_mean_2xN=in_mean_2xN,
                           count=pstate.count + 1, **p_fields)
  return params, bstate, pstate, stats, input_grads
