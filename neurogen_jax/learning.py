"""One training step over a chunk of L tokens for B streams: brain + readout + plasticity.

Two modes:
- `local` (default): the brain runs forward only. Per token, the readout (w_out, b_out)
  and the output side of the embedding get their cross-entropy gradient from Broca's
  features (no gradient through the spikes); the tiles learn by the local rules of
  `plasticity` (e-prop signal, STDP, dopamine, tagging, homeostasis, replay), per token;
  the input projection w_in and the input side of the embedding get the e-prop gradient
  estimate (zero with e-prop off). Gradients are averaged over the chunk and applied once
  by optax.
- `bptt`: surrogate-gradient truncated backprop through `cognitive_step` over the chunk,
  for every trainable parameter (tiles and w_in included): the control that tells what
  the local rules leave on the table.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from neurogen_jax import brain, plasticity, readout
from neurogen_jax.brain import BrainState, Params
from neurogen_jax.config import BrainConfig
from neurogen_jax.plasticity import PlasticityConfig, PlasticState

TRAINABLE_LOCAL = ("w_in", "w_out", "b_out", "embed")
TRAINABLE_BPTT = ("tiles", "w_in", "w_out", "b_out", "embed")


class TrainState(NamedTuple):
  """Everything a training run carries from chunk to chunk (all pytrees)."""

  params: Params
  opt_state: Any
  brain_state: BrainState
  plastic: PlasticState
  step: jax.Array


def trainable(params: Params, mode: str) -> dict[str, jax.Array]:
  names = TRAINABLE_BPTT if mode == "bptt" else TRAINABLE_LOCAL
  return {n: getattr(params, n) for n in names}


def make_optimizer(learning_rate: float, grad_clip: float = 1.0, weight_decay: float = 0.0,
                   decay_steps: int = 0) -> optax.GradientTransformation:
  """Adam(W) with global-norm clipping; `inject_hyperparams` so the rate can be lowered live.

  decay_steps: > 0 multiplies every update by a cosine from 1 down to 0 over that many
    optimizer steps (0 after them), on top of the injected rate, so a rollback's lower
    rate and the decay compose. 0: no decay.
  """
  if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 0:
    raise ValueError(f"decay_steps must be an integer >= 0 (0 = no decay), got {decay_steps!r}")
  parts = [optax.clip_by_global_norm(grad_clip),
           optax.inject_hyperparams(optax.adamw)(learning_rate=learning_rate, weight_decay=weight_decay)]
  if decay_steps:
    parts.append(optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, decay_steps)))
  return optax.chain(*parts)


def init_train_state(config: BrainConfig, pcfg: PlasticityConfig, optimizer, key: jax.Array,
                     batch: int, mode: str = "local") -> TrainState:
  params, bstate = brain.init(config, key, batch)
  return TrainState(params=params, opt_state=optimizer.init(trainable(params, mode)), brain_state=bstate,
                    plastic=plasticity.init_plastic_state(config, pcfg), step=jnp.zeros((), jnp.int32))


def _readout_loss(p: dict, features_BxNr: jax.Array, targets_B: jax.Array, dtype=None
                  ) -> jax.Array:
  """Mean cross entropy of the readout (w_out, b_out, embed) on fixed Broca features (its
  dots' operands in `dtype`: `readout.matmul_dtype`)."""
  logits_BxV = readout.logits(p["embed"], p["w_out"], p["b_out"], features_BxNr, dtype)
  return jnp.mean(readout.cross_entropy(logits_BxV, targets_B))


class ChunkMetrics(NamedTuple):
  loss: jax.Array          # mean cross entropy over the chunk, nats/token
  finite: jax.Array        # False: NaN/Inf appeared, the update was skipped (state unchanged)
  loss_BxL: jax.Array      # per token
  correct_BxL: jax.Array   # top-1 hit per token
  rates_A: jax.Array       # mean spikes/neuron/tick per area
  plastic: dict            # plasticity statistics (dopamine, tags, ...)


def _local_chunk(config, pcfg, ts: TrainState, inputs_BxL, targets_BxL, axis_name=None):
  collect = pcfg.any_brain_rule
  # The chunk's e-prop gradient estimates for the input side, summed over its tokens
  # (none carried with e-prop off: those gradients are zero).
  g_in0 = None
  if pcfg.eprop:
    g_in0 = tuple(jnp.zeros(x.shape, jnp.float32) for x in (ts.params.w_in, ts.params.embed))

  def body(carry, xs):
    params, bstate, pstate, g_in = carry
    tok_B, tgt_B = xs
    bstate, logits_BxV, aux = brain.cognitive_step(params, bstate, tok_B, config, collect=collect)
    ce_B = readout.cross_entropy(logits_BxV, tgt_B)
    params, bstate, pstate, pstats, in_g = plasticity.apply(
        config, pcfg, params, bstate, pstate, aux, logits_BxV, tgt_B, ce_B, tok_B, axis_name)
    if in_g is not None:
      g_in = (g_in[0] + in_g.w_in_DxNin, g_in[1].at[in_g.tokens_B].add(in_g.embed_rows_BxD))
    correct_B = (jnp.argmax(logits_BxV, -1) == tgt_B).astype(jnp.float32)
    rate_A = jnp.mean(aux.rates_PxA, axis=0)
    feats = aux.features_BxNr.astype(jnp.bfloat16)
    return (params, bstate, pstate, g_in), (ce_B, correct_B, rate_A, pstats, feats)

  (params, bstate, pstate, g_in), (ce_LxB, cor_LxB, rate_LxA, pstats, feats_LxBxNr) = jax.lax.scan(
      body, (ts.params, ts.brain_state, ts.plastic, g_in0), (inputs_BxL.T, targets_BxL.T))
  # The readout learns from the whole chunk at once: one [L*B] minibatch of Broca features.
  feats = feats_LxBxNr.reshape(-1, feats_LxBxNr.shape[-1]).astype(jnp.float32)
  grads = jax.grad(_readout_loss)(trainable(params, "local"), feats, targets_BxL.T.reshape(-1),
                                  readout.matmul_dtype(config))
  if g_in is not None:
    n_tok = inputs_BxL.shape[1]
    grads["w_in"] = grads["w_in"] + g_in[0] / n_tok
    grads["embed"] = grads["embed"] + g_in[1] / n_tok
  return params, bstate, pstate, grads, ce_LxB, cor_LxB, rate_LxA, pstats


def _bptt_chunk(config, pcfg, ts: TrainState, inputs_BxL, targets_BxL):
  def loss_fn(p_train, params, bstate):
    params = params._replace(**p_train)

    # Rematerialise each token's ticks in the backward pass: memory holds one brain state
    # per token, not one per tick.
    @jax.checkpoint
    def body(bs, xs):
      tok_B, tgt_B = xs
      bs, logits_BxV, aux = brain.cognitive_step(params, bs, tok_B, config, collect=False)
      ce_B = readout.cross_entropy(logits_BxV, tgt_B)
      correct_B = (jnp.argmax(logits_BxV, -1) == tgt_B).astype(jnp.float32)
      return bs, (ce_B, correct_B, jnp.mean(aux.rates_PxA, axis=0))

    bs, (ce_LxB, cor_LxB, rate_LxA) = jax.lax.scan(body, bstate, (inputs_BxL.T, targets_BxL.T))
    return jnp.mean(ce_LxB), (bs, ce_LxB, cor_LxB, rate_LxA)

  p_train = trainable(ts.params, "bptt")
  (_, (bstate, ce_LxB, cor_LxB, rate_LxA)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      p_train, ts.params, ts.brain_state)
  bstate = jax.lax.stop_gradient(bstate)
  pstats = plasticity.empty_stats(inputs_BxL.shape[1])
  return ts.params, bstate, ts.plastic, grads, ce_LxB, cor_LxB, rate_LxA, pstats


@functools.partial(jax.jit, static_argnames=("config", "pcfg", "optimizer", "mode", "axis_name"))
def train_chunk(ts: TrainState, inputs_BxL: jax.Array, targets_BxL: jax.Array, *, config: BrainConfig,
                pcfg: PlasticityConfig, optimizer: optax.GradientTransformation, mode: str = "local",
                axis_name: str | None = None) -> tuple[TrainState, ChunkMetrics]:
  """Trains on one chunk: inputs/targets int32 [B, L] (targets = next tokens).

  If anything non-finite appears (loss, weights, brain or plasticity state), the update is
  skipped: the returned state equals `ts` except that `step` advances, and
  `metrics.finite` is False (the caller counts these and may roll back).

  axis_name: inside `jax.pmap`/`shard_map` with the streams split over devices, the mapped
  axis: gradients, plasticity, the finiteness guard and the metric means then cover all
  streams (see `sharding`). None under plain jit, sharded inputs included.
  """
  if mode == "bptt" and config.spike_dtype == "int8":
    raise ValueError("mode='bptt' differentiates through the propagated spikes, which "
                     "spike_dtype='int8' cannot carry; use spike_dtype='auto' for bptt (int8 "
                     "spikes are for the local rules and generation).")
  chunk = _bptt_chunk if mode == "bptt" else functools.partial(_local_chunk, axis_name=axis_name)
  params, bstate, pstate, grads, ce_LxB, cor_LxB, rate_LxA, pstats = chunk(
      config, pcfg, ts, inputs_BxL, targets_BxL)
  mean = lambda x: x if axis_name is None else jax.lax.pmean(x, axis_name)
  grads = jax.tree.map(mean, grads)
  p_train = trainable(params, mode)
  updates, opt_state = optimizer.update(grads, ts.opt_state, p_train)
  p_train = optax.apply_updates(p_train, updates)
  if "tiles" in p_train:  # Dale's law: magnitudes stay non-negative.
    p_train["tiles"] = jnp.maximum(p_train["tiles"], 0).astype(params.tiles.dtype)
  params = params._replace(**p_train)
  new_ts = TrainState(params, opt_state, bstate, pstate, ts.step + 1)
  # Guard: a NaN/Inf anywhere (loss, weights, state) skips the whole update.
  finite = jnp.all(jnp.isfinite(ce_LxB))
  for leaf in jax.tree.leaves((params, bstate, pstate)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      finite &= jnp.all(jnp.isfinite(leaf))
  if axis_name is not None:  # every device keeps or skips the update alike
    finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
  new_ts = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_ts, ts)
  new_ts = new_ts._replace(step=ts.step + 1)
  metrics = ChunkMetrics(loss=mean(jnp.mean(ce_LxB)), finite=finite, loss_BxL=ce_LxB.T, correct_BxL=cor_LxB.T,
                         rates_A=mean(jnp.mean(rate_LxA, axis=0)),
                         plastic=jax.tree.map(lambda x: jnp.mean(x, axis=0), pstats))
  return new_ts, metrics


@functools.partial(jax.jit, static_argnames=("config",))
def eval_chunk(params: Params, bstate: BrainState, inputs_BxL: jax.Array, targets_BxL: jax.Array, *,
               config: BrainConfig) -> tuple[BrainState, jax.Array, jax.Array]:
  """Forward only: (state, nats per token [B, L], top-1 hits [B, L]); no learning."""
  def body(bs, xs):
    tok_B, tgt_B = xs
    bs, logits_BxV, _ = brain.cognitive_step(params, bs, tok_B, config, collect=False)
    ce_B = readout.cross_entropy(logits_BxV, tgt_B)
    return bs, (ce_B, (jnp.argmax(logits_BxV, -1) == tgt_B).astype(jnp.float32))

  bstate, (ce_LxB, cor_LxB) = jax.lax.scan(body, bstate, (inputs_BxL.T, targets_BxL.T))
  return bstate, ce_LxB.T, cor_LxB.T
