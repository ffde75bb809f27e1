r"""Plots a training run.

  python -m experiments.plot runs/tiny [--out DIR] [--text "To be, or not to be"]

Writes into RUN_DIR/plots/ (or --out):
  loss.png      cross entropy (nats/token) and bits per byte over training tokens
  rates.png     firing rate of each area (spikes per neuron per tick, %)
  dopamine.png  dopamine (reward prediction error) and the running reward baseline
  raster.png    spikes of one token's five-phase cycle across the six areas, from the
                latest checkpoint after reading `--text` (the last token is the one shown)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import app, flags, logging

from neurogen_jax import brain, checkpoint, corpus
from neurogen_jax import generate as generate_lib
from neurogen_jax import train as train_lib
from neurogen_jax.phases import phase_of_tick

_OUT = flags.DEFINE_string("out", None, "Output directory (default RUN_DIR/plots).")
_TEXT = flags.DEFINE_string("text", "To be, or not to be, that is the question",
                            "Text the brain reads before the rastered token (its last token).")
_MAX_NEURONS = flags.DEFINE_integer("max_neurons", 2000, "At most this many neurons in the raster "
                                    "(every k-th neuron).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", str(corpus.cache_root() / "xla"),
    "Directory of compiled XLA programs reused by later runs ('' = off).")


def read_metrics(run_dir: Path) -> list[dict]:
  path = run_dir / train_lib.METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no metrics yet; train first (they are written every "
                            "train.log_interval chunks).")
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if "event" not in r]  # skip/rollback events carry no statistics


def plot_loss(records: list[dict], out: Path) -> Path:
  tokens = [r["tokens"] for r in records]
  fig, (ax_loss, ax_bpb) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
  ax_loss.plot(tokens, [r["loss"] for r in records], label="interval")
  ax_loss.plot(tokens, [r["loss_avg"] for r in records], label="run average", alpha=0.7)
  ax_loss.set_ylabel("cross entropy (nats/token)")
  ax_loss.legend()
  ax_bpb.plot(tokens, [r["bits_per_byte"] for r in records], color="C2")
  ax_bpb.set_ylabel("bits per byte")
  ax_bpb.set_xlabel("training tokens")
  for ax in (ax_loss, ax_bpb):
    ax.grid(alpha=0.3)
  return _save(fig, out / "loss.png")


def plot_rates(records: list[dict], out: Path) -> Path:
  tokens = [r["tokens"] for r in records]
  areas = [k.split("/", 1)[1] for k in records[0] if k.startswith("rate/")]
  fig, ax = plt.subplots(figsize=(8, 4))
  for area in areas:
    ax.plot(tokens, [100 * r[f"rate/{area}"] for r in records], label=area)
  ax.set_ylabel("firing rate (% of neurons per tick)")
  ax.set_xlabel("training tokens")
  ax.legend(ncol=3, fontsize="small")
  ax.grid(alpha=0.3)
  return _save(fig, out / "rates.png")


def plot_dopamine(records: list[dict], out: Path) -> Path:
  tokens = [r["tokens"] for r in records]
  fig, (ax_da, ax_r) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
  ax_da.plot(tokens, [r["plasticity/dopamine"] for r in records], color="C3")
  ax_da.axhline(0.0, color="k", lw=0.5)
  ax_da.set_ylabel("dopamine (reward - baseline)")
  ax_r.plot(tokens, [r["plasticity/reward_mean"] for r in records], color="C4")
  ax_r.set_ylabel("reward baseline (-nats)")
  ax_r.set_xlabel("training tokens")
  for ax in (ax_da, ax_r):
    ax.grid(alpha=0.3)
  return _save(fig, out / "dopamine.png")


def token_raster(loaded: checkpoint.LoadedBrain, token_ids: list[int], max_neurons: int
                 ) -> tuple[np.ndarray, int]:
  """Spikes [ticks, sampled neurons] of the cycle of the last of `token_ids`, and the stride."""
  config = loaded.config
  stride = max(1, math.ceil(config.num_neurons / max_neurons))
  state = generate_lib.inference_state(config, loaded.brain_state)
  for token in token_ids[:-1]:
    state, _, _ = brain.cognitive_step(loaded.params, state, np.asarray([token], np.int32), config,
                                       collect=False)
  _, _, aux = brain.cognitive_step(loaded.params, state, np.asarray([token_ids[-1]], np.int32),
                                   config, collect=False, raster_stride=stride)
  return np.asarray(aux.raster_TxS), stride


def plot_raster(loaded: checkpoint.LoadedBrain, text: str, max_neurons: int, out: Path
                ) -> tuple[Path, int]:
  """raster.png; returns it and the number of spikes shown."""
  config = loaded.config
  ids = loaded.tokenizer.encode(text) or [loaded.tokenizer.eos_id]
  raster_TxS, stride = token_raster(loaded, ids, max_neurons)
  ticks, neurons = np.nonzero(raster_TxS)
  fig, ax = plt.subplots(figsize=(9, 6))
  area_of = np.searchsorted(np.asarray(config.area_offsets), neurons * stride, side="right") - 1
  for i, name in enumerate(config.area_names):
    sel = area_of == i
    ax.scatter((ticks[sel] + 0.5) * config.dt_ms, neurons[sel] * stride, s=6, marker="s",
               color=f"C{i}", linewidths=0)
  for offset in config.area_offsets:
    ax.axhline(offset, color="k", lw=0.3)
  phase_T = phase_of_tick(config)
  for p, phase in enumerate(config.phases):
    start = np.flatnonzero(phase_T == p)[0] * config.dt_ms
    ax.axvline(start, color="grey", lw=0.5, ls="--")
    ax.text(start, config.num_neurons, f" {phase.name}", va="bottom", fontsize="small")
  ax.set_xlim(0, config.ticks_per_token * config.dt_ms)
  ax.set_ylim(0, config.num_neurons)
  ax.set_yticks([o + s / 2 for o, s in zip(config.area_offsets, config.area_sizes)],
                config.area_names)
  ax.set_xlabel(f"time in the token's cycle (ms); every {stride}. neuron shown")
  ax.set_title(f"spikes while reading {loaded.tokenizer.decode(ids[-1:])!r} "
               f"(step {loaded.metadata['step']})", pad=18)
  return _save(fig, out / "raster.png"), int(ticks.size)


def _save(fig, path: Path) -> Path:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("Usage: python -m experiments.plot RUN_DIR [--out DIR] [--text TEXT]")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  if _COMPILATION_CACHE.value:
    train_lib.enable_compilation_cache(_COMPILATION_CACHE.value)
  run_dir = Path(argv[1])
  out = Path(_OUT.value) if _OUT.value else run_dir / "plots"
  out.mkdir(parents=True, exist_ok=True)
  try:
    records = read_metrics(run_dir)
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  if not records:
    sys.exit(f"error: {run_dir / train_lib.METRICS_FILE} is empty; train for at least one "
             "log_interval first.")
  for path in (plot_loss(records, out), plot_rates(records, out), plot_dopamine(records, out)):
    print(f"{path}: {len(records)} points up to {records[-1]['tokens']:,.0f} tokens")
  try:
    loaded = checkpoint.load_brain(run_dir)
  except checkpoint.CheckpointError as e:
    print(f"no raster: {e}", file=sys.stderr)
    return
  if loaded.tokenizer is None:
    print("no raster: the checkpoint holds no tokenizer to encode --text.", file=sys.stderr)
    return
  path, spikes = plot_raster(loaded, _TEXT.value, _MAX_NEURONS.value, out)
  print(f"{path}: {spikes} spikes in one {loaded.config.ticks_per_token}-tick cycle")


if __name__ == "__main__":
  app.run(main)
