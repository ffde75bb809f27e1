r"""Generates text from a checkpoint.

  python -m experiments.generate --checkpoint runs/tiny --prompt "Once upon a time" \
      --max_length 50 --temperature 0.8 [--weights_dtype bfloat16]

`--checkpoint` is a checkpoint_step_N directory, or a run (or its checkpoints/) directory
for the latest one. Prints the prompt followed by the generated text.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
from absl import app, flags, logging

from neurogen_jax import brain, checkpoint, corpus
from neurogen_jax import generate as generate_lib
from neurogen_jax import train as train_lib

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint, checkpoints/ or run directory.",
                                  required=True)
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue ('' = start a new document).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 50, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_WEIGHTS_DTYPE = flags.DEFINE_enum(
    "weights_dtype", "float32", ["float32", "bfloat16"],
    "dtype of the dense token weights (w_in, embed, w_out) while generating: bfloat16 halves "
    "their bytes per token (brain.inference_params); the checkpoint is not changed.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", str(corpus.cache_root() / "xla"),
    "Directory of compiled XLA programs reused by later runs ('' = off).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  if _COMPILATION_CACHE.value:
    train_lib.enable_compilation_cache(_COMPILATION_CACHE.value)
  try:
    loaded = checkpoint.load_brain(_CHECKPOINT.value)
    if loaded.tokenizer is None:
      raise checkpoint.CheckpointError(
          f"{_CHECKPOINT.value}: this checkpoint holds no tokenizer (saved by NeuroGenModel, which "
          "works on token ids); generate from it with NeuroGenModel.generate.")
    state = generate_lib.inference_state(loaded.config, loaded.brain_state)
    params = loaded.params
    if _WEIGHTS_DTYPE.value != "float32":
      params = brain.inference_params(params, jnp.dtype(_WEIGHTS_DTYPE.value))
    text = generate_lib.generate_text(
        params, state, loaded.config, loaded.tokenizer, _PROMPT.value,
        max_length=_MAX_LENGTH.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        seed=_SEED.value)
  except (checkpoint.CheckpointError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(_PROMPT.value + text)


if __name__ == "__main__":
  app.run(main)
