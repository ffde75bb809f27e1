"""Scores a trained brain on a text: nats/token, bits per UTF-8 byte, top-1 (next to baselines).

  python -m experiments.evaluate --checkpoint=runs/default --text=heldout.txt
  python -m experiments.evaluate --checkpoint=runs/default --text=a.txt,b.txt --train_text=train/*.txt
  python -m experiments.evaluate --checkpoint=runs/default --text=... --baselines

`--checkpoint` is a run directory, its `checkpoints/` directory or one checkpoint (the
latest is taken). Several `--text` files are one stream (documents joined by eos). The
baselines (unigram, KN 2/3/5, xz | train) use the checkpoint's tokenizer and training
tokens: `--train_text` files, or `--baselines` for the default corpus' 38 training plays.
Without either only the brain's row is printed, and its first token costs ln V (the
convention's add-one unigram needs the training ids). See `neurogen_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from absl import app, flags

from neurogen_jax import checkpoint, corpus, evaluate
from neurogen_jax.data import resolve_files

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run, checkpoints/ or checkpoint directory.")
_TEXT = flags.DEFINE_list("text", None, "Text file(s) to score (glob or comma list).")
_TRAIN_TEXT = flags.DEFINE_list("train_text", [], "Training text file(s) for the baselines.")
_BASELINES = flags.DEFINE_bool("baselines", False, "Baselines on the default corpus' training split.")
_BATCH = flags.DEFINE_integer("batch", 64, "Parallel streams.")
_CHUNK = flags.DEFINE_integer("chunk_len", 64, "Tokens per stream per jitted call.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 0, "Score only the first N tokens (0 = all).")
_JSON = flags.DEFINE_string("json", "", "Also write the rows to this JSON file.")


def _read(spec: list[str]) -> list[str]:
  return [p.read_text(encoding="utf-8") for p in resolve_files(spec)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value or not _TEXT.value:
    raise app.UsageError("--checkpoint and --text are required")
  if _TRAIN_TEXT.value and _BASELINES.value:
    raise app.UsageError("give --train_text or --baselines, not both")
  loaded = checkpoint.load_brain(_CHECKPOINT.value)
  tok = loaded.tokenizer
  test_ids, test_text = evaluate.encode_documents(tok, _read(_TEXT.value))
  test_ids, test_text = evaluate.truncate_tokens(tok, test_ids, test_text, _MAX_TOKENS.value)
  print(f"{_CHECKPOINT.value}: {loaded.config.num_neurons:,} neurons, vocab {loaded.config.vocab_size}; "
        f"scoring {len(test_ids):,} tokens / {len(test_text.encode('utf-8')):,} bytes", flush=True)
  kw = dict(theta_N=loaded.brain_state.theta_N, batch_size=_BATCH.value, chunk_len=_CHUNK.value,
            name="neurogen")
  if _TRAIN_TEXT.value or _BASELINES.value:
    train_docs = (_read(_TRAIN_TEXT.value) if _TRAIN_TEXT.value else
                  [p.read_text(encoding="utf-8") for p in corpus.shakespeare_split()[0]])
    train_ids, train_text = evaluate.encode_documents(tok, train_docs)
    rows = evaluate.evaluate_against_baselines(loaded.params, loaded.config, test_ids, test_text,
                                               train_ids, train_text, log=print, **kw)
  else:
    row = evaluate.evaluate_tokens(loaded.params, loaded.config, test_ids,
                                   len(test_text.encode("utf-8")), log=print, **kw)
    rows = [row]
    print(f"{row.name}: {row.bits_per_byte:.4f} bits/byte, {row.nats_per_token:.4f} nats/token, "
          f"top-1 {row.top1_accuracy:.4f} ({row.n_tokens} tokens; first token at ln V: no training "
          "text given)", flush=True)
  if _JSON.value:
    Path(_JSON.value).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
  app.run(main)
