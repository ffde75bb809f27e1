"""Held-out evaluation: exact arithmetic, every token scored once, the baselines' convention."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurogen_jax import baselines, brain, checkpoint, evaluate, learning, plasticity
from neurogen_jax.config import tiny_config
from neurogen_jax.metrics import EvalResult
from neurogen_jax.tokenizer import ByteTokenizer

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config()
  params, _ = brain.init(cfg, jax.random.PRNGKey(0))
  return cfg, params


def _context_free(params, b_out_V):
  """A brain whose readout ignores Broca (w_out = 0): p(token) = softmax(b_out), known exactly."""
  return params._replace(w_out=jnp.zeros_like(params.w_out), b_out=jnp.asarray(b_out_V, jnp.float32))


@pytest.mark.parametrize("n,batch,chunk,warmup", [
    (1, 4, 8, 32), (7, 3, 4, 2), (100, 8, 16, 0), (100, 8, 5, 13), (257, 5, 32, 32), (64, 64, 1, 1),
])
def test_stream_layout_scores_each_prediction_once(n, batch, chunk, warmup):
  lay = evaluate.stream_layout(n, batch, chunk, warmup)
  b, steps = lay.position_BxT.shape
  assert b == min(batch, n) and steps % chunk == 0
  scored = lay.position_BxT[lay.scored_BxT]
  np.testing.assert_array_equal(np.sort(scored), np.arange(n))  # each once
  for i in range(b):
    pos = lay.position_BxT[i]
    real = pos[pos >= 0]
    assert np.all(pos[real.size:] == -1)  # padding only at the end
    np.testing.assert_array_equal(real, np.arange(real[0], real[0] + real.size))  # contiguous
    first_scored = pos[np.argmax(lay.scored_BxT[i])]
    assert first_scored - real[0] == min(warmup, first_scored)  # warm-up context before it
    assert np.all(lay.scored_BxT[i, :real.size] == (real >= first_scored))
  sizes = lay.scored_BxT.sum(axis=1)
  assert sizes.max() - sizes.min() <= 1  # balanced pieces


def test_stream_layout_rejects_bad_arguments():
  with pytest.raises(ValueError, match="at least one prediction"):
    evaluate.stream_layout(0, 4, 8)
  with pytest.raises(ValueError, match="batch_size"):
    evaluate.stream_layout(10, 0, 8)


def test_uniform_model_bits_per_byte_is_log2_v_times_tokens_over_bytes(tiny):
  cfg, params = tiny
  v = cfg.vocab_size
  ids = np.random.default_rng(0).integers(0, v, 50)
  n_bytes = 137
  r = evaluate.evaluate_tokens(_context_free(params, np.zeros(v)), cfg, ids, n_bytes,
                               batch_size=3, chunk_len=8, warmup=2)
  assert r.n_tokens == 50 and r.n_bytes == n_bytes
  assert r.bits_per_byte == pytest.approx(math.log2(v) * 50 / n_bytes, rel=1e-6)
  assert r.nats_per_token == pytest.approx(math.log(v), rel=1e-6)


@pytest.mark.parametrize("batch,chunk,warmup", [(1, 16, 0), (4, 8, 3), (64, 8, 32)])
def test_every_token_scored_once_with_the_first_by_the_unigram(tiny, batch, chunk, warmup):
  """Context-free readout: the total must equal the exact sum over t = 1..L-1 of
  -log softmax(b)[y_t], plus the add-one unigram's cost of y_0, whatever the streams."""
  cfg, params = tiny
  rng = np.random.default_rng(1)
  v = cfg.vocab_size
  b_out = rng.normal(0, 2, v)
  train = rng.integers(0, v, 500)
  y = rng.integers(0, v, 41)
  r = evaluate.evaluate_tokens(_context_free(params, b_out), cfg, y, 100, batch_size=batch,
                               chunk_len=chunk, warmup=warmup, train_ids=train)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(b_out, jnp.float32)), np.float64)
  uni = baselines.UnigramModel(v).fit(train)
  total = -uni.token_log_prob(int(y[0])) - logp[y[1:]].sum()
  assert r.nats_per_token * r.n_tokens == pytest.approx(total, rel=1e-5)
  hits = int(y[0] == uni.argmax()) + int(np.sum(y[1:] == np.argmax(b_out)))
  assert r.top1_accuracy == pytest.approx(hits / y.size)


def test_unigram_readout_reproduces_the_unigram_baseline_row(tiny):
  """A brain whose readout is the add-one unigram scores exactly `run_baselines`' unigram row."""
  cfg, params = tiny
  tok = ByteTokenizer()
  train_text = "the cat sat on the mat. " * 20 + "a dog ran. " * 7
  test_text = "the dog sat on a cat. the mat ran."
  train, test = np.array(tok.encode(train_text)), np.array(tok.encode(test_text))
  uni = baselines.UnigramModel(cfg.vocab_size).fit(train)
  model = _context_free(params, np.log(uni.prob_vector()))
  row = evaluate.evaluate_tokens(model, cfg, test, len(test_text.encode()), batch_size=4,
                                 chunk_len=8, warmup=2, train_ids=train)
  ref = baselines.run_baselines(train, test, test_text, None, cfg.vocab_size, orders=())[0]
  assert row.n_tokens == ref.n_tokens and row.n_bytes == ref.n_bytes
  assert row.bits_per_byte == pytest.approx(ref.bits_per_byte, rel=1e-6)
  assert row.top1_accuracy == pytest.approx(ref.top1_accuracy)


def test_learned_thresholds_are_used(tiny):
  cfg, params = tiny
  params = params._replace(w_out=jax.random.normal(jax.random.PRNGKey(3), params.w_out.shape))
  y = np.random.default_rng(2).integers(0, cfg.vocab_size, 40)
  kw = dict(batch_size=4, chunk_len=8, warmup=2)
  base = evaluate.evaluate_tokens(params, cfg, y, 100, **kw)
  same = evaluate.evaluate_tokens(params, cfg, y, 100, theta_N=np.zeros(cfg.num_neurons), **kw)
  silenced = evaluate.evaluate_tokens(params, cfg, y, 100, theta_N=np.full(cfg.num_neurons, 5.0), **kw)
  assert same.bits_per_byte == base.bits_per_byte
  assert abs(silenced.bits_per_byte - base.bits_per_byte) > 1e-3
  with pytest.raises(ValueError, match="theta_N has shape"):
    evaluate.evaluate_tokens(params, cfg, y, 100, theta_N=np.zeros(3), **kw)


def test_bad_ids_are_reported(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match="vocab_size"):
    evaluate.evaluate_tokens(params, cfg, [0, 1, cfg.vocab_size], 3)
  with pytest.raises(ValueError, match=">= 2 ids"):
    evaluate.evaluate_tokens(params, cfg, [5], 1)


def test_evaluate_against_baselines_prints_the_model_next_to_them(tiny, capsys):
  cfg, params = tiny
  tok = ByteTokenizer()
  train_text = "she sells sea shells by the sea shore. " * 30
  test_text = "the sea shells she sells. "
  train, test = np.array(tok.encode(train_text)), np.array(tok.encode(test_text))
  rows = evaluate.evaluate_against_baselines(params, cfg, test, test_text, train, train_text,
                                             batch_size=4, chunk_len=8, warmup=2, name="tiny brain")
  names = [r.name for r in rows]
  assert names == ["unigram (add-one)", "KN bigram", "KN trigram", "KN 5-gram", "xz -9e | train",
                   "tiny brain"]
  assert all(r.n_tokens == test.size and r.n_bytes == len(test_text) for r in rows)
  # The untrained brain (readout bias = -ln V, w_out = 0) is uniform after the first token.
  first = -baselines.UnigramModel(cfg.vocab_size).fit(train).token_log_prob(int(test[0]))
  total = first + (test.size - 1) * math.log(cfg.vocab_size)
  assert rows[-1].bits_per_byte == pytest.approx(total / LN2 / len(test_text), rel=1e-5)
  assert rows[3].bits_per_byte < rows[0].bits_per_byte < rows[-1].bits_per_byte
  out = capsys.readouterr().out
  assert "tiny brain" in out and "KN 5-gram" in out and "bits/byte" in out
  stale = [EvalResult.from_total("unigram (add-one)", 1.0, test.size + 1, len(test_text))]
  with pytest.raises(ValueError, match="recompute the baselines"):
    evaluate.evaluate_against_baselines(params, cfg, test, test_text, train, baseline_rows=stale,
                                        batch_size=4, chunk_len=8, log=None)


def test_encode_documents_and_truncate_keep_text_and_ids_aligned():
  tok = ByteTokenizer()
  docs = ["héllo wörld\n", "zwei — drei"]
  ids, text = evaluate.encode_documents(tok, docs)
  assert text == "".join(docs)
  assert list(ids) == tok.encode(docs[0]) + [tok.eos_id] + tok.encode(docs[1])
  assert tok.decode(ids) == text
  # Cut inside "é" (2 bytes): steps back to the character's start.
  cut_ids, cut_text = evaluate.truncate_tokens(tok, ids, text, 2)
  assert cut_text == "h" and list(cut_ids) == tok.encode("h")
  cut_ids, cut_text = evaluate.truncate_tokens(tok, ids, text, len(tok.encode(docs[0])) + 3)
  assert cut_text == docs[0] + "zw" and text.startswith(cut_text)
  full_ids, full_text = evaluate.truncate_tokens(tok, ids, text, 0)
  assert full_text == text and len(full_ids) == len(ids)


@pytest.mark.slow
def test_evaluate_cli_scores_a_checkpoint(tmp_path, tiny):
  """`python -m experiments.evaluate` on a saved tiny brain: the row equals `evaluate_tokens`
  with the checkpoint's parameters and learned thresholds."""
  cfg, _ = tiny
  pcfg = plasticity.PlasticityConfig()
  optimizer = learning.make_optimizer(1e-3)
  ts = learning.init_train_state(cfg, pcfg, optimizer, jax.random.PRNGKey(4), 2)
  params = ts.params._replace(w_out=jax.random.normal(jax.random.PRNGKey(5), ts.params.w_out.shape))
  theta = jax.random.uniform(jax.random.PRNGKey(6), (cfg.num_neurons,), maxval=0.5)
  ts = ts._replace(params=params, brain_state=ts.brain_state._replace(theta_N=theta))
  tok = ByteTokenizer()
  checkpoint.save(tmp_path / "run" / "checkpoints", ts, rng=jax.random.PRNGKey(0), data_state=None,
                  tokenizer=tok, brain_config=cfg, metadata={})
  test_text, train_text = "the cat sat on the mat.\n", "a cat and a mat and a hat.\n" * 10
  (tmp_path / "test.txt").write_text(test_text)
  (tmp_path / "train.txt").write_text(train_text)
  out = tmp_path / "rows.json"
  cmd = [sys.executable, "-m", "experiments.evaluate", f"--checkpoint={tmp_path / 'run'}",
         f"--text={tmp_path / 'test.txt'}", f"--train_text={tmp_path / 'train.txt'}", "--batch=4",
         "--chunk_len=8", f"--json={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "KN 5-gram" in proc.stdout and "neurogen" in proc.stdout
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows][-1] == "neurogen" and len(rows) == 6
  test, train = np.array(tok.encode(test_text)), np.array(tok.encode(train_text))
  ref = evaluate.evaluate_tokens(params, cfg, test, len(test_text), batch_size=4, chunk_len=8,
                                 train_ids=train, theta_N=theta)
  assert rows[-1]["bits_per_byte"] == pytest.approx(ref.bits_per_byte, rel=1e-5)
