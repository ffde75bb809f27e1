"""Text generation: the brain reads a prompt token by token, then writes one token per cycle.

`generate` is a pure function of (params, one-stream brain state, config, prompt ids):
the prompt is scanned through `cognitive_step`, then each new token is sampled from the
logits of the cycle before and fed back in. The whole loop is one jitted `lax.scan`.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import brain
from neurogen_jax.brain import BrainState, Params
from neurogen_jax.config import BrainConfig


def inference_state(config: BrainConfig, state: BrainState) -> BrainState:
  """A one-stream state for a new text: fresh neuron dynamics, the learned homeostasis.

  `state` (any number of streams, e.g. a training state) contributes what the brain
  learned about itself, the per-neuron thresholds and rates; its streams' ongoing
  activity belongs to other texts and is dropped.
  """
  fresh = brain.init_state(config, 1)
  return fresh._replace(theta_N=state.theta_N, rate_N=state.rate_N)


def generate(params: Params, state: BrainState, config: BrainConfig, prompt_ids: Sequence[int],
             max_length: int = 50, temperature: float = 1.0, top_k: int = 0, seed: int = 0
             ) -> list[int]:
  """Continues `prompt_ids` by `max_length` tokens.

  Args:
    params: the brain's parameters.
    state: a one-stream brain state (see `inference_state`).
    config: the brain's config (static).
    prompt_ids: at least one token id in [0, config.vocab_size).
    max_length: number of tokens to generate (>= 1).
    temperature: softmax temperature (> 0), or 0 for greedy (argmax) decoding.
    top_k: sample among the k most likely tokens only (0 = all of them).
    seed: sampling seed; the same inputs and seed give the same tokens.

  Returns:
    The generated token ids (the prompt is not repeated).

  Raises:
    ValueError: an argument is out of range (the message says which and why).
  """
  prompt = _check_prompt(prompt_ids, config.vocab_size)
  _check_int("max_length", max_length, 1)
  _check_int("top_k", top_k, 0, config.vocab_size)
  _check_int("seed", seed, None)
  if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
      or not math.isfinite(temperature) or temperature < 0):
    raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}.")
  streams = state.neurons.v.shape[0]
  if streams != 1:
    raise ValueError(f"generate needs a one-stream brain state, got {streams} streams; pass "
                     "inference_state(config, state).")
  greedy = temperature == 0
  tokens = _generate(params, state, jnp.asarray(prompt, jnp.int32), jax.random.PRNGKey(seed),
                     jnp.float32(1.0 if greedy else temperature), config=config,
                     max_length=max_length, top_k=top_k, greedy=greedy)
  return [int(t) for t in np.asarray(tokens)]


def generate_text(params: Params, state: BrainState, config: BrainConfig, tokenizer, prompt: str,
                  **kwargs) -> str:
  """`generate` on text: encodes `prompt` (an empty prompt starts after an eos, like a new
  document), decodes the continuation. `kwargs` are `generate`'s."""
  ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
  return tokenizer.decode(generate(params, state, config, ids, **kwargs))


@functools.partial(jax.jit, static_argnames=("config", "max_length", "top_k", "greedy"))
def _generate(params: Params, state: BrainState, prompt_L: jax.Array, key: jax.Array,
              temperature: jax.Array, *, config: BrainConfig, max_length: int, top_k: int,
              greedy: bool) -> jax.Array:
  def read(carry, token):
    st, _ = carry
    st, logits_1xV, _ = brain.cognitive_step(params, st, token[None], config, collect=False)
    return (st, logits_1xV[0]), None

  def sample(logits_V, key):
    if greedy:
      return jnp.argmax(logits_V).astype(jnp.int32)
    logits_V = logits_V / temperature
    if top_k:
      top_logits, top_ids = jax.lax.top_k(logits_V, top_k)
      return top_ids[jax.random.categorical(key, top_logits)].astype(jnp.int32)
    return jax.random.categorical(key, logits_V).astype(jnp.int32)

  def write(carry, key):
    token = sample(carry[1], key)
    carry, _ = read(carry, token)
    return carry, token

  carry = (state, jnp.zeros((config.vocab_size,), jnp.float32))
  carry, _ = jax.lax.scan(read, carry, prompt_L)
  _, tokens = jax.lax.scan(write, carry, jax.random.split(key, max_length))
  return tokens


def _check_prompt(prompt_ids: Sequence[int], vocab_size: int) -> np.ndarray:
  if isinstance(prompt_ids, (str, bytes)):
    raise ValueError("prompt_ids must be token ids, got text; encode it with the tokenizer "
                     "(or call generate_text).")
  ids = np.asarray(list(prompt_ids))
  if ids.size == 0:
    raise ValueError("prompt_ids is empty; give at least one token (e.g. the tokenizer's eos_id "
                     "to start a new document).")
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"prompt_ids must be a flat sequence of integer token ids, got {ids.dtype} "
                     f"with shape {ids.shape}.")
  bad = ids[(ids < 0) | (ids >= vocab_size)]
  if bad.size:
    raise ValueError(f"prompt_ids holds {bad[:5].tolist()}, outside [0, {vocab_size}) of this "
                     "brain's vocabulary; was the prompt encoded with the checkpoint's tokenizer?")
  return ids


def _check_int(name: str, value, low: int | None, high: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if low is not None and value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}.")
  if high is not None and value > high:
    raise ValueError(f"{name} must be <= {high} (the vocabulary size), got {value}.")
