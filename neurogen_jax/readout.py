"""Readout: the read areas' filtered spike traces (Broca's by default) -> layer norm ->
embedding_dim -> tied logits.

Features are layer-normalised with `rsqrt(var + eps)` (a plain std has a NaN gradient
when a population is silent). Logits are tied to the token embedding:
logits = (LN(trace) @ w_out / sqrt(Nr)) @ embed^T / sqrt(D) + b_out (the 1/sqrt factors keep
one optimizer step's effect on the logits independent of the brain's size). The bias starts at the unigram
log-probabilities when they are known (`unigram_bias`), so the untrained model is a
unigram model rather than a uniform one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5


def _normalize(x_BxF: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x - mean) / sqrt(var + eps) per row, and the rows' 1 / sqrt(var + eps) [B, 1]."""
  mean_Bx1 = jnp.mean(x_BxF, axis=-1, keepdims=True)
  var_Bx1 = jnp.mean(jnp.square(x_BxF - mean_Bx1), axis=-1, keepdims=True)
  rstd_Bx1 = jax.lax.rsqrt(var_Bx1 + LN_EPS)
  return (x_BxF - mean_Bx1) * rstd_Bx1, rstd_Bx1


@jax.custom_vjp
def normalize_features(trace_BxNr: jax.Array) -> jax.Array:
  """Layer norm over neurons, no affine part: [B, Nr] -> [B, Nr].

  Its gradient (the e-prop learning signal of the read areas goes through it) is written
  out: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), its two row means formed first and
  kept apart (an optimization barrier) from the elementwise pass. Left to autodiff, XLA on
  a GPU fused the whole backward into one row-per-program Triton kernel over rows of Nr
  (16,384 and more) values, which took 1.2 ms a token at B = 2,048 on an H200 for 0.34 GB;
  written out, its fusions take a few µs per tick (docs/BENCHMARKS.md, session 17).
  """
  return _normalize(trace_BxNr)[0]


def _normalize_fwd(trace_BxNr):
  xhat_BxNr, rstd_Bx1 = _normalize(trace_BxNr)
  return xhat_BxNr, (xhat_BxNr, rstd_Bx1)


def _normalize_bwd(res, g_BxNr):
  xhat_BxNr, rstd_Bx1 = res
  g_BxNr = g_BxNr.astype(jnp.float32)
  g_mean_Bx1 = jnp.mean(g_BxNr, axis=-1, keepdims=True)
  gx_mean_Bx1 = jnp.mean(g_BxNr * xhat_BxNr, axis=-1, keepdims=True)
  g_mean_Bx1, gx_mean_Bx1 = jax.lax.optimization_barrier((g_mean_Bx1, gx_mean_Bx1))
  dx_BxNr = rstd_Bx1 * (g_BxNr - g_mean_Bx1 - xhat_BxNr * gx_mean_Bx1)
  return (dx_BxNr.astype(xhat_BxNr.dtype),)


normalize_features.defvjp(_normalize_fwd, _normalize_bwd)


def matmul_dtype(config):
  """The operand dtype of the readout's and the input projection's dense dots
  (`BrainConfig.readout_matmul_dtype`): None = the weights' own dtype, else bfloat16."""
  return None if config.readout_matmul_dtype == "float32" else jnp.dtype(jnp.bfloat16)


def weights_dot(x, w, dtype=None):
  """x @ w with float32 accumulation and result. Operands in `dtype`, or by default in w's
  dtype (bfloat16 weights: `brain.inference_params`); float32 weights stay float32 unless
  dtype is given (mixed precision: `BrainConfig.readout_matmul_dtype`).

  With operands narrower than float32 the gradient's dots take them in that dtype too (the
  incoming float32 cotangent is rounded to it; `_narrow_dot`): autodiff would have formed
  float32 dots of the float32 cotangent with the float32 weights instead (XLA drops the
  float32 -> bfloat16 -> float32 round trip of the weights), at the float32 rate."""
  dtype = jnp.dtype(w.dtype if dtype is None else dtype)
  if dtype == jnp.float32 or jnp.ndim(w) != 2:
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  return _narrow_dot(x, w, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _narrow_dot(x_xK, w_KxN, dtype):
  """x [..., K] @ w [K, N] with operands in `dtype`, float32 accumulation and result."""
  return _narrow_dot_fwd(x_xK, w_KxN, dtype)[0]


def _narrow_dot_fwd(x_xK, w_KxN, dtype):
  xc_xK, wc_KxN = x_xK.astype(dtype), w_KxN.astype(dtype)
  out = jnp.dot(xc_xK, wc_KxN, preferred_element_type=jnp.float32)
  # The inputs' own dtypes ride along as empty arrays (residuals must be arrays).
  return out, (xc_xK, wc_KxN, jnp.zeros((0,), x_xK.dtype), jnp.zeros((0,), w_KxN.dtype))


def _narrow_dot_bwd(dtype, res, g_xN):
  xc_xK, wc_KxN, x_like, w_like = res
  gc_xN = g_xN.astype(dtype)
  k, n = wc_KxN.shape
  gx_xK = jnp.dot(gc_xN, wc_KxN.T, preferred_element_type=jnp.float32)
  gw_KxN = jnp.dot(xc_xK.reshape(-1, k).T, gc_xN.reshape(-1, n),
                   preferred_element_type=jnp.float32)
  return gx_xK.astype(x_like.dtype), gw_KxN.astype(w_like.dtype)


_narrow_dot.defvjp(_narrow_dot_fwd, _narrow_dot_bwd)


def hidden(w_out_NrxD: jax.Array, trace_BxNr: jax.Array, dtype=None) -> jax.Array:
  """[B, D] readout hidden vector."""
  scale = 1.0 / np.sqrt(w_out_NrxD.shape[0])
  return weights_dot(normalize_features(trace_BxNr), w_out_NrxD, dtype) * scale


def logits(embed_VxD: jax.Array, w_out_NrxD: jax.Array, b_out_V: jax.Array,
           trace_BxNr: jax.Array, dtype=None) -> jax.Array:
  """[B, V] next-token logits from the read areas' read-phase traces (`read_areas`); the
  dots' operands in `dtype` (None: the weights' dtype; see `weights_dot`)."""
  scale = 1.0 / np.sqrt(embed_VxD.shape[1])
  return weights_dot(hidden(w_out_NrxD, trace_BxNr, dtype), embed_VxD.T, dtype) * scale + b_out_V


def read_areas(config, x_BxN: jax.Array) -> jax.Array:
  """The read areas' columns of x [B, N] side by side (`config.readout_areas`): [B, Nr]."""
  parts = [x_BxN[:, config.area_slice(a)] for a in config.readout_areas]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def read_mask_N(config) -> np.ndarray:
  """[N] bool: the neurons of the read areas (`config.readout_areas`), the columns that
  `read_areas` takes (static: from the config alone)."""
  mask_N = np.zeros((config.num_neurons,), bool)
  for a in config.readout_areas:
    mask_N[config.area_slice(a)] = True
  return mask_N


def place_read_areas(config, x_BxN: jax.Array, f_BxNr: jax.Array) -> jax.Array:
  """x [B, N] with the read areas' columns set from f [B, Nr] (`read_areas`' inverse)."""
  start = 0
  for a in config.readout_areas:
    sl = config.area_slice(a)
    x_BxN = x_BxN.at[:, sl].set(f_BxNr[:, start:start + sl.stop - sl.start])
    start += sl.stop - sl.start
  return x_BxN


def with_slow(config, features_BxNr: jax.Array, slow_BxNr: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """The readout's features of a token and the next slow state (`readout_slow_decay`).

  Without slow features: (features [B, Nr], slow unchanged). With decay d: slow' =
  d slow + (1 - d) features, and the features are [features, slow'] side by side, [B, 2 Nr].
  """
  d = config.readout_slow_decay
  if not d:
    return features_BxNr, slow_BxNr
  slow_BxNr = d * slow_BxNr + (1.0 - d) * features_BxNr
  return jnp.concatenate([features_BxNr, slow_BxNr], axis=1), slow_BxNr


def fold_slow(config, g_BxF: jax.Array) -> jax.Array:
  """A gradient with respect to the readout's features [B, F] -> with respect to this
  token's read-area features [B, Nr]: the slow half's part through slow' = d slow + (1 - d)
  features is (1 - d) times its gradient (the earlier tokens' part is not sent back)."""
  d = config.readout_slow_decay
  if not d:
    return g_BxF
  nr = config.read_neurons
  return g_BxF[:, :nr] + (1.0 - d) * g_BxF[:, nr:]


def unigram_bias(token_ids: np.ndarray, vocab_size: int, smoothing: float = 0.5) -> np.ndarray:
  """log p(token) with add-`smoothing` counts: the readout bias of an untrained model."""
  counts = np.bincount(np.asarray(token_ids).ravel(), minlength=vocab_size)[:vocab_size]
  p = (counts + smoothing) / (counts.sum() + smoothing * vocab_size)
  return np.log(p).astype(np.float32)


def cross_entropy(logits_BxV: jax.Array, targets_B: jax.Array) -> jax.Array:
  """Per-stream cross entropy in nats, [B]."""
  logz = jax.nn.logsumexp(logits_BxV, axis=-1)
  picked = jnp.take_along_axis(logits_BxV, targets_B[:, None], axis=-1)[:, 0]
  return logz - picked
