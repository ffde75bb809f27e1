"""experiments.learn end to end on a synthetic stand-in for the Shakespeare split (no network)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from neurogen_jax import corpus

WORDS = ("the king queen lord lady speaks walks sleeps sings to of in a my his her "
         "night day sword crown love death good bad fair foul now then").split()


def _play(rng, n_lines):
  lines = []
  for _ in range(n_lines):
    # A tiny grammar: subject, verb, preposition, object (context predicts the next word).
    s, v = rng.choice(WORDS[:4]), rng.choice(WORDS[4:8])
    lines.append(f"{s} {v} {rng.choice(WORDS[8:11])} the {rng.choice(WORDS[15:23])}.")
  return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("plays")
  rng = np.random.default_rng(0)
  names = [f"play_{i:02d}_gut.txt" for i in range(corpus.NUM_TEXTS - len(corpus.HELDOUT_NAMES))]
  # Two lines a play: the tokenizer's text (760 tokens) and the held-out plays. The run
  # trains on extra/ (--train_files): 24 lines and a Latin-1 line, 291 tokens.
  for name in names + list(corpus.HELDOUT_NAMES):
    (d / name).write_text(_play(rng, 2), encoding="utf-8")
  extra = tmp_path_factory.mktemp("extra")
  (extra / "more.txt").write_text(_play(rng, 24), encoding="utf-8")
  (extra / "empty.txt").write_text("", encoding="utf-8")
  (extra / "latin1.txt").write_bytes("caf\xe9 the king sleeps.\n".encode("latin-1"))
  return d, extra


MAX_TOKENS = 384  # 6 chunks of 8 x 8


def _learn(tmp_path, corpus_dir, *args):
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.learn", f"--corpus_dir={corpus_dir}", f"--out={out}",
         "--scale=0.03", "--vocab_size=320", "--batch=8", "--chunk_len=8", "--lr=3e-2",
         "--eval_batch=8", "--eval_chunk_len=16", "--eval_tokens=256", "--time_budget_s=300", *args]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return json.loads((out / "results.json").read_text()), proc.stdout


@pytest.mark.slow
def test_passes_and_train_files(tmp_path, corpus_dir):
  """One run for the three flags: --train_files replaces the training stream, --passes=2
  repeats it and --max_tokens stops inside the second pass, where one pass could not get
  to (one pass: 4 chunks, 256 tokens; two whole passes: 9 chunks)."""
  plays, extra = corpus_dir
  out, log = _learn(tmp_path, plays, f"--train_files={extra}/*.txt", "--passes=2",
                    f"--max_tokens={MAX_TOKENS}")
  assert "2 documents from 3 files (1 empty skipped)" in log and "bytes replaced" in log
  # The training stream is the files' (its token count as the log reports it), not the plays'.
  files_tokens = int(log.split("(1 empty skipped), ")[1].split(" tokens")[0].replace(",", ""))
  assert out["train_tokens"] == files_tokens
  # Two passes: more tokens trained than the stream holds; --max_tokens: exactly as many as
  # asked (a multiple of B x L = 64).
  assert files_tokens < MAX_TOKENS < 2 * files_tokens  # inside the second pass
  assert out["timings"]["tokens_trained"] == MAX_TOKENS and out["timings"]["stopped"] == "max_tokens"
  # It learns: the held-out plays (the same grammar) beat the unigram of the training stream.
  uni = {r["name"]: r["bits_per_byte"] for r in out["rows"]}["unigram (add-one)"]
  assert out["model"]["bits_per_byte"] < uni - 0.1, (out["model"], uni)
