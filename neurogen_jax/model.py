"""`NeuroGenModel`: the seed's object API over the pure functions.

    model = NeuroGenModel(vocab_size=257, embedding_dim=64, config=tiny_config())
    loss = model.train_step(input_ids, target_ids)      # nats per token
    ids = model.generate([72, 105], max_length=20, temperature=0.8)
    model.save_checkpoint("ckpt"); model.load_checkpoint("ckpt")
    model.get_statistics()["areas"]["broca"]["firing_rate"]

The object only holds the current pytrees; every computation is `learning.train_chunk`,
`brain.cognitive_step` or `generate.generate`.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax import brain, checkpoint, generate, learning, plasticity, readout
from neurogen_jax.config import PHASE_NAMES, BrainConfig, without_execution_fields
from neurogen_jax.plasticity import PlasticityConfig


def _device(gpu_device: int | None) -> jax.Device:
  devices = jax.devices()
  if gpu_device is None:
    return devices[0]
  if not isinstance(gpu_device, int) or isinstance(gpu_device, bool) or not 0 <= gpu_device < len(devices):
    listing = ", ".join(f"{i}: {d.device_kind} ({d.platform})" for i, d in enumerate(devices))
    raise ValueError(f"gpu_device={gpu_device!r} does not exist; the devices here are [{listing}]. "
                     f"Pass one of 0..{len(devices) - 1}.")
  return devices[gpu_device]


def check_token_ids(ids, vocab_size: int, name: str) -> np.ndarray:
  """Validates token ids: an integer array with every id in [0, vocab_size)."""
  arr = np.asarray(ids)
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
    raise ValueError(f"{name} must be integer token ids, got dtype {arr.dtype}.")
  if arr.size == 0:
    raise ValueError(f"{name} is empty; pass at least one token id.")
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or hi >= vocab_size:
    bad = lo if lo < 0 else hi
    raise ValueError(f"{name} contains token id {bad}, outside [0, {vocab_size}) (vocab_size={vocab_size}). "
                     "Re-tokenize with the model's tokenizer or raise vocab_size.")
  return arr.astype(np.int32)


class NeuroGenModel:
  """A brain that learns language token by token (see module docstring).

  Args:
    vocab_size, embedding_dim: override the config's (the seed's defaults: 50257, 512).
    gpu_device: index into `jax.devices()` (a missing one is an error listing them).
    config: a BrainConfig (default: the full 79,872-neuron brain).
    plasticity_config: a PlasticityConfig (default: all five mechanisms and e-prop on).
    mode: "local" (local rules + optax readout) or "bptt".
    learning_rate: optax rate of the readout and embeddings.
    seed: initialisation seed.
  """

  def __init__(self, vocab_size: int = 50257, embedding_dim: int = 512, gpu_device: int | None = 0,
               config: BrainConfig | None = None, plasticity_config: PlasticityConfig | None = None,
               mode: str = "local", learning_rate: float = 3e-3, seed: int = 0):
    if mode not in ("local", "bptt"):
      raise ValueError(f"mode must be 'local' or 'bptt', got {mode!r}")
    self.device = _device(gpu_device)
    self.config = (config or BrainConfig()).replace(vocab_size=vocab_size, embedding_dim=embedding_dim)
    self.plasticity = plasticity_config or PlasticityConfig()
    self.mode = mode
    self.learning_rate = learning_rate
    self.optimizer = learning.make_optimizer(learning_rate)
    self.seed = seed
    self._ts: learning.TrainState | None = None
    self._last = {"rates_A": np.zeros(len(self.config.areas)), "plastic": {}, "loss": float("nan")}
    self._time_ms = 0.0
    self._cycles = 0
    self._tokens = 0
    self._reward_sum = 0.0
    with jax.default_device(self.device):
      self.params, self.state = self._placed(brain.init(self.config, jax.random.PRNGKey(seed), batch=1))

  def _placed(self, tree):
    """`tree` committed to the model's device. jit keys its cache on whether an argument is
    committed: arrays merely created under `jax.default_device` are not, the step's outputs
    are, so uncommitted starting values compiled `train_chunk` a second time."""
    return jax.device_put(tree, self.device)

  # ---------------------------------------------------------------- training
  def _train_state(self, batch: int) -> learning.TrainState:
    """The training pytrees for `batch` streams (new streams start at rest)."""
    if self._ts is None:
      with jax.default_device(self.device):
        self._ts = self._placed(learning.TrainState(
            params=self.params, opt_state=self.optimizer.init(learning.trainable(self.params, self.mode)),
            brain_state=self.state, plastic=plasticity.init_plastic_state(self.config, self.plasticity),
            step=jnp.zeros((), jnp.int32)))
    if self._ts.brain_state.neurons.v.shape[0] != batch:
      with jax.default_device(self.device):
        fresh = self._placed(brain.init_state(self.config, batch))
      old = self._ts.brain_state
      self._ts = self._ts._replace(brain_state=fresh._replace(theta_N=old.theta_N, rate_N=old.rate_N))
    return self._ts

  def set_unigram_prior(self, token_ids) -> None:
    """Starts the readout bias at the unigram log-probabilities of `token_ids`."""
    ids = check_token_ids(token_ids, self.config.vocab_size, "token_ids")
    self.params = self.params._replace(
        b_out=self._placed(jnp.asarray(readout.unigram_bias(ids, self.config.vocab_size))))
    if self._ts is not None:
      self._ts = self._ts._replace(params=self.params)

  def train_step(self, input_ids, target_ids) -> float:
    """One learning step on a chunk; ids [L] (one stream) or [B, L]. Returns mean nats/token."""
    x = check_token_ids(input_ids, self.config.vocab_size, "input_ids")
    y = check_token_ids(target_ids, self.config.vocab_size, "target_ids")
    if x.shape != y.shape:
      raise ValueError(f"input_ids {x.shape} and target_ids {y.shape} must have the same shape.")
    if x.ndim == 1:
      x, y = x[None], y[None]
    if x.ndim != 2:
      raise ValueError(f"input_ids must be [L] or [B, L], got shape {x.shape}.")
    ts = self._train_state(x.shape[0])
    t0 = time.perf_counter()
    ts, m = learning.train_chunk(ts, jax.device_put(x, self.device), jax.device_put(y, self.device),
                                 config=self.config, pcfg=self.plasticity, optimizer=self.optimizer,
                                 mode=self.mode)
    loss = float(m.loss)
    self._time_ms += (time.perf_counter() - t0) * 1e3
    self._ts = ts
    self.params, self.state = ts.params, ts.brain_state
    self._cycles += x.shape[1]
    self._tokens += x.size
    self._reward_sum += -loss * x.size
    self._last = {"rates_A": np.asarray(m.rates_A), "plastic": {k: float(v) for k, v in m.plastic.items()},
                  "loss": loss}
    return loss

  # ---------------------------------------------------------------- inference
  def generate(self, prompt_token_ids, max_length: int = 100, temperature: float = 1.0,
               top_k: int | None = None, seed: int = 0) -> list[int]:
    """Reads the prompt, then writes `max_length` tokens (temperature 0 = greedy)."""
    if isinstance(prompt_token_ids, (str, bytes)):
      raise ValueError("prompt_token_ids must be token ids, got text; encode it with the "
                       "tokenizer first.")
    prompt = np.asarray(prompt_token_ids)
    if prompt.ndim == 2 and prompt.shape[0] == 1:  # a batch of one
      prompt = prompt[0]
    if prompt.ndim != 1:
      raise ValueError(f"prompt_token_ids must be [L] or [1, L] token ids, got shape "
                       f"{prompt.shape}; generate continues one prompt at a time.")
    state = generate.inference_state(self.config, self.state)
    return generate.generate(self.params, state, self.config, prompt.tolist(),
                             max_length=max_length,
                             temperature=temperature, top_k=top_k or 0, seed=seed)

  # ---------------------------------------------------------------- checkpoints
  def save_checkpoint(self, path: str) -> Path:
    """Writes weights, brain state, optimizer and plasticity state to `path` (atomically)."""
    ts = self._train_state(self.state.neurons.v.shape[0])
    meta = {"tokens": self._tokens, "cycles": self._cycles, "mode": self.mode,
            "learning_rate": self.learning_rate, "plasticity": checkpoint.config_to_dict(self.plasticity)}
    info = checkpoint.save(path, ts, rng=jax.random.PRNGKey(self.seed), data_state=None, tokenizer=None,
                           brain_config=self.config, metadata=meta, keep=0)
    return info.path

  def load_checkpoint(self, path: str) -> None:
    """Restores everything `save_checkpoint` wrote (the latest checkpoint under `path`)."""
    found = checkpoint.find_checkpoint(path)
    meta = checkpoint.read_metadata(found)
    saved = checkpoint.config_from_dict(BrainConfig, meta["brain_config"])
    # How the step runs (XLA or Pallas, unrolling) may differ from the checkpoint's.
    model_fields = lambda c: without_execution_fields(checkpoint.config_to_dict(c))
    diffs = checkpoint.config_differences(model_fields(saved), model_fields(self.config))
    if diffs:
      raise ValueError(f"{found}: checkpoint brain config does not match this model: {'; '.join(diffs)}")
    abstract = checkpoint.abstract_train_state(self.config, self.plasticity, self.optimizer,
                                               int(meta["batch_size"]), self.mode)
    ts, _ = checkpoint.restore(found, abstract, device=self.device)
    self._ts = ts
    self.params, self.state = ts.params, ts.brain_state
    self._tokens, self._cycles = int(meta.get("tokens", 0)), int(meta.get("cycles", 0))

  # ---------------------------------------------------------------- statistics
  def get_statistics(self) -> dict:
    """Counters, learning signals and per-area firing rate, mean weight and gates."""
    cfg, p = self.config, self.params
    tiles = np.asarray(jnp.mean(p.tiles.astype(jnp.float32), axis=(1, 2, 3)))
    block_area = np.asarray(p.conn.area_N).reshape(-1, cfg.tile)[:, 0]
    areas = {}
    for ai, name in enumerate(cfg.area_names):
      areas[name] = {"neurons": cfg.area_sizes[ai],
                     "firing_rate": float(self._last["rates_A"][ai]),
                     "mean_weight": float(tiles[block_area == ai].mean()),
                     "threshold_offset": float(np.asarray(self.state.theta_N[cfg.area_slice(name)]).mean())}
    areas["thalamus"]["gate"] = float(np.asarray(self.state.thal_gate_B).mean()) if "thalamus" in areas else None
    if "basal_ganglia" in areas:
      areas["basal_ganglia"]["gate"] = float(np.asarray(self.state.bg_gate_B).mean())
    return {
        "total_time_ms": self._time_ms,
        "cognitive_cycles": self._cycles,
        "tokens_processed": self._tokens,
        "average_reward": self._reward_sum / self._tokens if self._tokens else 0.0,
        "current_phase": PHASE_NAMES[-1] if self._cycles else PHASE_NAMES[0],
        "vocab_size": cfg.vocab_size,
        "embedding_dim": cfg.embedding_dim,
        "last_loss": self._last["loss"],
        "plasticity": self._last["plastic"],
        "areas": areas,
    }
