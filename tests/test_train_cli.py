"""The training harness end to end through the real CLIs (subprocesses, no stdin).

Runs the tiny config for a few chunks on local files of every supported format: trains,
writes checkpoints, metrics and TensorBoard events; resumes exactly; saves on SIGINT;
fine-tunes with --init_from; generates; plots; trains on a data-parallel mesh. Compiled
programs are shared between the subprocesses through a persistent compilation cache, so
only the first run compiles. Each run starts a process (seconds of imports and set-up,
whatever it trains), so runs are shared: module fixtures whose one run several tests check
(straight, finetuned). Runs of several processes joined by jax.distributed are
tests/test_train_cli_processes.py (a file of its own, so that `pytest -n 2 --dist
loadfile` runs it beside this one), which imports the helpers and fixtures here.
"""

import json
import math
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from neurogen_jax import brain, checkpoint, learning
from neurogen_jax import generate as generate_lib
from neurogen_jax import train as train_lib

REPO = Path(__file__).resolve().parents[1]
B, L = 4, 16  # the tiny config's streams and chunk length
TOKENS_PER_CHUNK = B * L
DOCS = ["The cat sat on the mat. ", "A dog ran in the fog; ", "Rain falls on the plain, ",
        "Birds sing in spring. ", "Fish swim and dim. ", "Stars shine at nine. ", "End of it all. "]


def _with_base_flags(flags: str) -> str:
  """`flags` after the suite's own XLA_FLAGS (tests/conftest.py), for a subprocess."""
  return f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  # JAX_COMPILATION_CACHE_DIR: the run's shared cache (conftest).
  e.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
           NEUROGEN_CACHE=str(tmp_path_factory.mktemp("neurogen_cache")))
  return e


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Seven short documents spread over a .txt, a .jsonl, a .jsonl.zst and a .parquet file."""
  d = tmp_path_factory.mktemp("texts")
  (d / "a.txt").write_text(DOCS[0])
  (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[1:3]))
  lines = "".join(json.dumps({"text": t, "meta": {}}) + "\n" for t in DOCS[3:5])
  (d / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
  pq.write_table(pa.table({"text": DOCS[5:7]}), d / "d.parquet")
  return d


def run_cli(module, args, env, timeout=300, stdin=subprocess.DEVNULL):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        stdin=stdin, capture_output=True, text=True, timeout=timeout)


def train_args(data_dir, run_dir, max_chunks, config="tiny", keep=2):
  return [f"--config={config}", f"--config.data.files={data_dir}", f"--run_dir={run_dir}",
          f"--config.train.max_chunks={max_chunks}", "--config.train.checkpoint_interval=2",
          "--config.train.log_interval=2", f"--config.train.keep_checkpoints={keep}"]


def check(proc):
  assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                f"stderr:\n{proc.stderr}")
  return proc


restore_all = checkpoint.restore_training_run


def metrics(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(directory):
  """{tag: [(step, value)]} read from tensorboardX event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for f in sorted(Path(directory).glob("events.out.tfevents.*")):
    raw, pos = f.read_bytes(), 0
    while pos < len(raw):
      (n,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def png_size(path):
  raw = path.read_bytes()[:24]
  assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
  return struct.unpack(">II", raw[16:24])


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env, data_dir):
  """6 chunks straight, a checkpoint every 2, all kept."""
  run_dir = tmp_path_factory.mktemp("straight")
  check(run_cli("experiments.train", train_args(data_dir, run_dir, 6, keep=3), env))
  return run_dir


def test_train_writes_checkpoints_metrics_and_events(straight):
  ckpts = straight / "checkpoints"
  assert sorted(p.name for p in ckpts.iterdir()) == [
      "checkpoint_step_2", "checkpoint_step_2.json", "checkpoint_step_4", "checkpoint_step_4.json",
      "checkpoint_step_6", "checkpoint_step_6.json"]
  meta = json.loads((ckpts / "checkpoint_step_6.json").read_text())
  assert meta == checkpoint.read_metadata(ckpts / "checkpoint_step_6")
  assert (meta["step"], meta["tokens"], meta["batch_size"], meta["chunk_len"]) == (6, 6 * 64, B, L)
  assert 0.5 < meta["loss"] < math.log(257) and 0 < time.time() - meta["time"] < 600
  assert meta["config"]["train"]["max_chunks"] == 6 and meta["brain_config"]["scale"] == 1 / 32
  assert meta["tokenizer"] == {"kind": "ByteTokenizer", "vocab_size": 257}
  # All four file formats were read, in order, without damage.
  documents = checkpoint.read_data_state(ckpts / "checkpoint_step_6")["documents"]
  assert documents["stats"]["documents"] >= len(DOCS)
  assert documents["stats"]["replacement_chars"] == 0

  records = metrics(straight)
  assert [r["step"] for r in records] == [2, 4, 6]
  assert [r["tokens"] for r in records] == [2 * 64, 4 * 64, 6 * 64]
  for r in records:
    assert 0.5 < r["loss"] < math.log(257)
    # Byte tokens: bits/byte = nats/ln2 per byte, a little more since eos has no bytes.
    assert r["loss"] / math.log(2) <= r["bits_per_byte"] <= 1.3 * r["loss"] / math.log(2)
    assert 0 <= r["accuracy"] <= 1 and r["tokens_per_s"] > 0
    assert all(0 < r[f"rate/{a}"] < 0.5 for a in ("thalamus", "wernicke", "broca", "pfc"))
    assert math.isfinite(r["plasticity/dopamine"]) and r["plasticity/reward_mean"] < 0
  events = tensorboard_scalars(straight / "tensorboard")
  assert [step for step, _ in events["loss"]] == [2, 4, 6]
  np.testing.assert_allclose([v for _, v in events["loss"]], [r["loss"] for r in records],
                             rtol=1e-6)
  assert "rate/broca" in events and "plasticity/dopamine" in events


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, straight, env, data_dir):
  """Straight's run (config by name) as a crash after its checkpoint at step 2 would leave
  it: its later checkpoints gone, their metrics and events still there. The same run
  (config given by path, all checkpoints kept) resumes from step 2 and is stopped by
  SIGINT, sent once it has logged step 6. (run_dir, CompletedProcess)"""
  run_dir = tmp_path_factory.mktemp("resumed")
  shutil.copytree(straight, run_dir, dirs_exist_ok=True)
  for step in (4, 6):
    shutil.rmtree(run_dir / "checkpoints" / f"checkpoint_step_{step}")
    (run_dir / "checkpoints" / f"checkpoint_step_{step}.json").unlink()
  assert checkpoint.latest_checkpoint(run_dir / "checkpoints").step == 2
  args = train_args(data_dir, run_dir, 1000, config="experiments/configs/tiny.py", keep=0)
  return run_dir, run_until_signal(args, env, signal.SIGINT, after_step=6)


def test_resume_is_exact(resumed, straight):
  # Up to step 6 the resumed run must come out bit for bit as the straight one. (A run
  # stopped by max_chunks off the checkpoint interval is saved all the same:
  # test_python_api_with_dataset_and_log_callback.)
  run_dir, second = resumed
  assert second.returncode == 0, second.stderr
  assert "Resumed from" in second.stderr and "(step 2, 128 tokens)" in second.stderr
  last = checkpoint.latest_checkpoint(run_dir / "checkpoints").step  # where SIGINT stopped it
  assert last >= 6
  assert [c.step for c in checkpoint.list_checkpoints(run_dir / "checkpoints")] == (
      list(range(2, last, 2)) + [last])  # the copied 2, then every 2nd chunk and the last

  resumed_ts, rng_resumed = restore_all(run_dir / "checkpoints" / "checkpoint_step_6")
  direct, rng_direct = restore_all(straight / "checkpoints" / "checkpoint_step_6")
  leaves = jax.tree_util.tree_flatten_with_path(direct)[0]
  differing = [jax.tree_util.keystr(path) for (path, a), b in zip(leaves, jax.tree.leaves(resumed_ts))
               if np.asarray(a).tobytes() != np.asarray(b).tobytes()]
  assert not differing, f"resumed run differs from the straight run in {differing}"
  np.testing.assert_array_equal(rng_resumed, rng_direct)
  assert (checkpoint.read_data_state(run_dir / "checkpoints" / "checkpoint_step_6")
          == checkpoint.read_data_state(straight / "checkpoints" / "checkpoint_step_6"))
  # The log goes on where the checkpoint was (the records after it, of the lost chunks,
  # dropped); the intervals 3-4 and 5-6 are the same as straight's.
  records = metrics(run_dir)
  assert [r["step"] for r in records] == list(range(2, last + 1, 2))
  assert [r["loss"] for r in records[:3]] == [r["loss"] for r in metrics(straight)]


def run_until_signal(args, env, signum, after_step=2, stdin=subprocess.DEVNULL):
  """Runs `python -m experiments.train ARGS`, sends it `signum` once it has logged step
  `after_step` and waits for it to exit: a CompletedProcess."""
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *map(str, args)], cwd=REPO,
                          env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  watchdog = threading.Timer(300, proc.kill)  # the resumed run goes to step 6+
  watchdog.start()
  try:
    lines = []
    for line in proc.stderr:
      lines.append(line)
      if line.startswith(f"step {after_step} |"):
        proc.send_signal(signum)
        break
    stdout, rest = proc.communicate()
  finally:
    watchdog.cancel()
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(lines) + rest)


def stopped_by_signal(proc, signum, run_dir):
  """Checks that the run exited cleanly on `signum` and saved a checkpoint where it stopped;
  the step."""
  assert proc.returncode == 0, proc.stderr
  name = signal.Signals(signum).name
  stopped = [line for line in proc.stderr.splitlines()
             if line.startswith(f"{name}: stopped at step")]
  assert stopped, proc.stderr
  step = int(stopped[0].split("step ")[1].split(";")[0])
  assert 2 <= step < 1000, proc.stderr
  latest = checkpoint.latest_checkpoint(run_dir / "checkpoints")
  assert latest.step == step and checkpoint.read_metadata(latest.path)["tokens"] == step * 64
  return step


@pytest.mark.parametrize("signum, run", [(signal.SIGINT, "resumed"), (signal.SIGTERM, "finetuned")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_exits_cleanly(request, signum, run):
  # The runs of two fixtures were stopped so: the resumed one by SIGINT, the fine-tuning
  # one by SIGTERM.
  run_dir, proc = request.getfixturevalue(run)
  stopped_by_signal(proc, signum, run_dir)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, straight, env, data_dir):
  """A fine-tuning run (--init_from=straight, --config.seed=1, a learning rate of its own)
  started on a terminal in a run directory that already holds a run with checkpoints (a
  copy of straight's), where the question "Load checkpoint?" is answered "n": the earlier
  run is moved aside and the new one starts afresh, from straight's weights. It runs
  until SIGTERM, sent once it has logged step 2, keeping all its checkpoints.
  (run_dir, CompletedProcess)"""
  run_dir = tmp_path_factory.mktemp("finetuned")
  shutil.copytree(straight, run_dir, dirs_exist_ok=True)  # a run with checkpoints to ask about
  args = train_args(data_dir, run_dir, 1000, keep=0) + [
      f"--init_from={straight}", "--config.seed=1", "--config.train.learning_rate=0.003"]
  controller, terminal = pty.openpty()
  try:
    os.write(controller, b"n\n")
    proc = run_until_signal(args, env, signal.SIGTERM, stdin=terminal)
  finally:
    os.close(terminal)
    os.close(controller)
  return run_dir, proc


def test_finetune_from_another_run(finetuned, straight):
  run_dir, proc = finetuned
  assert proc.returncode == 0, proc.stderr
  assert "Fine-tuning from" in proc.stderr
  tuned, _ = restore_all(run_dir / "checkpoints" / "checkpoint_step_2")
  source, _ = restore_all(straight / "checkpoints" / "checkpoint_step_6")
  assert int(tuned.step) == 2  # a run of its own
  assert float(optax.tree_utils.tree_get(tuned.opt_state, "learning_rate")) == pytest.approx(0.003)
  # Weights come from the source: seed 1 alone would draw an embedding ~N(0, 1) apart.
  assert np.mean(np.abs(tuned.params.embed - source.params.embed)) < 0.05
  assert np.mean(np.abs(tuned.params.b_out - source.params.b_out)) < 0.05
  # Fresh data: where any run is after 2 chunks.
  assert (checkpoint.read_data_state(run_dir / "checkpoints" / "checkpoint_step_2")
          == checkpoint.read_data_state(straight / "checkpoints" / "checkpoint_step_2"))


def test_generate_cli(straight, env):
  # (The shapes of test_generate_library's sampling, whose program this run compiles.)
  args = ["--checkpoint", straight, "--prompt", "The cat", "--max_length", "10",
          "--temperature", "0.8", "--top_k", "5", "--seed", "3"]
  first = check(run_cli("experiments.generate", args, env))
  assert first.stdout.startswith("The cat") and len(first.stdout) > len("The cat\n")
  # Seeded: the CLI prints what the library draws with the same seed in another process
  # (this one), so a second run of the CLI would print it again.
  loaded = checkpoint.load_brain(straight)
  state = generate_lib.inference_state(loaded.config, loaded.brain_state)
  again = generate_lib.generate_text(loaded.params, state, loaded.config, loaded.tokenizer,
                                     "The cat", max_length=10, temperature=0.8, top_k=5, seed=3)
  assert first.stdout == "The cat" + again + "\n"
  bad = run_cli("experiments.generate", args[:-6] + ["--temperature", "-1"], env)
  assert bad.returncode == 1 and "temperature must be a finite number >= 0" in bad.stderr


def test_generate_library(straight):
  loaded = checkpoint.load_brain(straight)
  state = generate_lib.inference_state(loaded.config, loaded.brain_state)
  prompt = loaded.tokenizer.encode("The cat")
  sampled = generate_lib.generate(loaded.params, state, loaded.config, prompt, max_length=10,
                                  temperature=1.0, top_k=5, seed=0)
  assert len(sampled) == 10 and all(0 <= t < loaded.config.vocab_size for t in sampled)
  assert sampled == generate_lib.generate(loaded.params, state, loaded.config, prompt,
                                          max_length=10, temperature=1.0, top_k=5, seed=0)
  # Greedy = the argmax chain of cognitive steps.
  greedy = generate_lib.generate(loaded.params, state, loaded.config, prompt, max_length=4,
                                 temperature=0)
  st, expected = state, []
  for token in prompt:
    st, logits, _ = brain.cognitive_step(loaded.params, st, np.asarray([token]), loaded.config,
                                         collect=False)
  for _ in range(4):
    expected.append(int(np.argmax(logits[0])))
    st, logits, _ = brain.cognitive_step(loaded.params, st, np.asarray([expected[-1]]),
                                         loaded.config, collect=False)
  assert greedy == expected
  with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
    generate_lib.generate(loaded.params, state, loaded.config, prompt, max_length=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[]), "prompt_ids is empty"),
    (dict(prompt_ids=[1, 300]), r"holds \[300\], outside \[0, 257\)"),
    (dict(prompt_ids="The cat"), "encode it with the tokenizer"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_k=258), r"top_k must be <= 257"),
    (dict(max_length=-1), "max_length must be >= 1"),
    (dict(max_length=2.5), "max_length must be an integer"),
])
def test_generate_rejects_bad_input(straight, kwargs, message):
  loaded = checkpoint.load_brain(straight)
  state = generate_lib.inference_state(loaded.config, loaded.brain_state)
  args = dict(prompt_ids=[1, 2], max_length=3, temperature=1.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    generate_lib.generate(loaded.params, state, loaded.config, **args)


def test_generate_needs_one_stream(straight):
  loaded = checkpoint.load_brain(straight)
  with pytest.raises(ValueError, match="one-stream brain state, got 4 streams"):
    generate_lib.generate(loaded.params, loaded.brain_state, loaded.config, [1], max_length=1)


def test_plot_cli(straight, env, tmp_path):
  text = "To be, or not to be, that is the question"
  proc = check(run_cli("experiments.plot", [straight, f"--out={tmp_path}", f"--text={text}"], env))
  for name in ("loss", "rates", "dopamine", "raster"):
    width, height = png_size(tmp_path / f"{name}.png")
    assert width >= 600 and height >= 300
  assert f"{tmp_path / 'loss.png'}: 3 points up to 384 tokens" in proc.stdout
  spikes = int(proc.stdout.split("raster.png: ")[1].split(" spikes")[0])
  assert "in one 5-tick cycle" in proc.stdout
  # The raster is the last token's cycle, every 2nd neuron (2,496 > --max_neurons 2000), from
  # a fresh one-stream state: the count printed is the one the brain gives. The tiny
  # brain is bursty, so one token's cycle may be nearly silent; the text as a whole is not.
  loaded = checkpoint.load_brain(straight)
  state, per_token = generate_lib.inference_state(loaded.config, loaded.brain_state), []
  for token in loaded.tokenizer.encode(text):
    state, _, aux = brain.cognitive_step(loaded.params, state, np.asarray([token], np.int32),
                                         loaded.config, collect=False, raster_stride=1)
    per_token.append(np.asarray(aux.raster_TxS))
  assert spikes == int(np.count_nonzero(per_token[-1][:, ::2]))
  rate = np.mean([r.mean() for r in per_token])
  assert 0.002 < rate < 0.2, [int(r.sum()) for r in per_token]  # alive over the text


def test_python_api_with_dataset_and_log_callback(tmp_path, capfd):
  # In this process (like tests/test_reliability.py): a Trainer on a list of texts runs to
  # 2 chunks; a second Trainer on the same run directory resumes it from its checkpoint
  # (resuming in a new process: test_resume_is_exact).
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
  texts = ["Alpha beta gamma delta. " * 20, "", "Second document; with more words. " * 10]

  def run(max_chunks):
    config = tiny.get_config()
    config.run_dir, config.train.max_chunks = str(tmp_path), max_chunks
    config.train.log_interval, config.train.checkpoint_interval = 1, 2
    calls = []
    result = train_lib.Trainer(config, dataset=texts,
                               log_callback=lambda *a: calls.append(a)).train()
    return calls, result, capfd.readouterr().err

  calls, result, stderr = run(2)
  assert (result.step, result.stopped) == (2, "max_chunks") and "Resumed from" not in stderr
  assert [c[0] for c in calls] == [1, 2]
  for step, loss, stats in calls:
    assert loss == stats["loss"] and 0.5 < loss < math.log(257)
    assert stats["tokens"] == step * TOKENS_PER_CHUNK
    assert {"bits_per_byte", "accuracy", "rate/broca", "plasticity/dopamine"} <= set(stats)
  calls, result, stderr = run(3)
  assert "Resumed from" in stderr and "(step 2, 128 tokens)" in stderr
  assert (result.step, result.stopped) == (3, "max_chunks")
  assert [c[0] for c in calls] == [3] and calls[0][2]["tokens"] == 3 * TOKENS_PER_CHUNK
  # The last chunk (off the checkpoint interval) was saved all the same.
  assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").step == 3


def test_contiguous_layout_trains_resumes_and_is_checked(tmp_path, capfd):
  """data.layout='contiguous' (the default config's, experiments.learn's layout): a Trainer
  on a list of texts trains and resumes from its checkpoint; endless data or another
  layout name are refused with what to set."""
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
  texts = [f"Document {k}: " + "alpha beta gamma delta. " * (5 + k) for k in range(12)]

  def trainer(max_chunks, run_dir=tmp_path, **data_overrides):
    config = tiny.get_config()
    config.run_dir, config.train.max_chunks = str(run_dir), max_chunks
    config.train.log_interval, config.train.checkpoint_interval = 1, 2
    config.data.layout, config.data.num_epochs = "contiguous", 1
    config.data.update(data_overrides)
    return train_lib.Trainer(config, dataset=texts)

  result = trainer(2).train()
  assert (result.step, result.stopped) == (2, "max_chunks")
  assert result.tokens == 2 * TOKENS_PER_CHUNK
  result = trainer(3).train()
  assert "Resumed from" in capfd.readouterr().err and result.step == 3
  with pytest.raises(train_lib.ConfigError, match="num_epochs >= 1"):
    trainer(4, run_dir=tmp_path / "endless", num_epochs=0).train()
  with pytest.raises(train_lib.ConfigError, match="'packed' or 'contiguous'"):
    trainer(4, run_dir=tmp_path / "other", layout="shuffled").train()
  # A run of one layout does not resume in the other.
  with pytest.raises(checkpoint.CheckpointError, match="data.layout: checkpoint 'contiguous'"):
    trainer(4, layout="packed", num_epochs=0).train()


def test_offline_hub_error_is_fast_and_clear(tmp_path, env):
  start = time.monotonic()
  proc = run_cli("experiments.train", ["--config=slimpajama", f"--run_dir={tmp_path}"], env,
                 timeout=60)
  assert time.monotonic() - start < 30
  assert proc.returncode == 1
  assert "'cerebras/SlimPajama-627B' needs the hub, but HF_HUB_OFFLINE=1" in proc.stderr
  assert "--config.data.files=" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_resume_refuses_a_mismatched_config(straight, env, data_dir):
  args = train_args(data_dir, straight, 8) + ["--config.brain.embedding_dim=32", "--resume=yes"]
  proc = run_cli("experiments.train", args, env)
  assert proc.returncode == 1
  assert str(straight / "checkpoints" / "checkpoint_step_6" / "metadata.json") in proc.stderr
  assert "brain_config.embedding_dim: checkpoint 64, now 32" in proc.stderr
  assert "--init_from" in proc.stderr  # what to do instead
  assert checkpoint.latest_checkpoint(straight / "checkpoints").step == 6  # untouched


def test_resume_yes_without_checkpoint_fails_clearly(tmp_path, env, data_dir):
  proc = run_cli("experiments.train", train_args(data_dir, tmp_path, 2) + ["--resume=yes"], env)
  assert proc.returncode == 1
  assert f"{tmp_path / 'checkpoints'} holds no checkpoint" in proc.stderr


def test_config_names_resolve_to_files():
  from experiments import train as train_main  # pylint: disable=g-import-not-at-top
  configs = REPO / "experiments" / "configs"
  assert train_main.config_argv(["prog", "--config=tiny", "--config.seed=3"]) == [
      "prog", f"--config={configs / 'tiny.py'}", "--config.seed=3"]
  assert train_main.config_argv(["prog", "--config", "slimpajama"]) == [
      "prog", "--config", str(configs / "slimpajama.py")]
  assert train_main.config_argv(["prog", "--config=my/own.py"]) == ["prog", "--config=my/own.py"]
  with pytest.raises(SystemExit, match=r"no config named 'common'; choose one of \['default', "
                     r"'slimpajama', 'tiny'\]"):
    train_main.config_argv(["prog", "--config=common"])


def test_terminal_asks_before_loading(finetuned):
  # The fine-tuning run was started on a terminal in a copy of straight's run, answering "n".
  run_dir, proc = finetuned
  assert proc.returncode == 0, proc.stderr
  assert "Load checkpoint? (y/n)" in proc.stdout
  assert "Starting afresh" in proc.stderr
  archived = [p for p in run_dir.iterdir() if p.name.startswith("previous-")]
  assert len(archived) == 1
  assert checkpoint.latest_checkpoint(archived[0] / "checkpoints").step == 6
  assert [r["step"] for r in metrics(archived[0])] == [2, 4, 6]  # moved aside whole
  # The new run's checkpoints and log only, from step 2 to where SIGTERM stopped it.
  steps = [c.step for c in checkpoint.list_checkpoints(run_dir / "checkpoints")]
  assert steps[0] == 2 and steps == list(range(2, steps[-1], 2)) + [steps[-1]]
  assert [r["step"] for r in metrics(run_dir)] == list(range(2, steps[-1] + 1, 2))


def test_configs_build_their_brains():
  from experiments.configs import default, slimpajama, tiny  # pylint: disable=g-import-not-at-top
  seed = slimpajama.get_config()
  assert (seed.data.vocab_size, seed.brain.embedding_dim, seed.data.dataset_name,
          seed.data.streaming, seed.data.max_seq_length, seed.train.tokens_per_chunk,
          seed.train.max_chunks, seed.train.checkpoint_interval, seed.train.log_interval,
          seed.train.gpu_device) == (50257, 512, "cerebras/SlimPajama-627B", True, 512, 10000,
                                     1000, 100, 10, 0)
  assert seed.train.batch_size * seed.train.chunk_len == 10000
  full = train_lib.brain_config_from(seed, seed.data.vocab_size)
  assert (full.num_neurons, full.vocab_size, full.ticks_per_token) == (79872, 50257, 20)
  assert full.readout_size == 2 * 79872  # the best readout, as in the default config
  best = default.get_config()
  best_brain = train_lib.brain_config_from(best, 4096)
  assert best_brain.num_neurons == 79872
  # docs/LEARNING.md's best local-rule recipe: every area read twice (fast and slow).
  assert best_brain.readout_size == 2 * 79872 and best_brain.readout_slow_decay == 0.85
  assert (best_brain.tau_trace_ms, best.train.batch_size, best.train.chunk_len) == (100.0, 64, 4)
  small = tiny.get_config()
  assert train_lib.brain_config_from(small, 257).num_neurons == 2496
  small.train.batch_size = 8  # chunk_len follows tokens_per_chunk // batch_size
  assert small.train.chunk_len == 8
  small.brain.phase_ticks = (1, 2)
  with pytest.raises(train_lib.ConfigError, match="phase_ticks needs 5 tick counts"):
    train_lib.brain_config_from(small, 257)


@pytest.mark.slow
def test_cli_data_parallel_mesh_trains_and_resumes(tmp_path, straight, env, data_dir):
  """`--config.mesh.data=2` on two (forced CPU) devices: trains, checkpoints, resumes onto
  the mesh, and stays within rounding of the one-device run (same data, same seed)."""
  env2 = dict(env, XLA_FLAGS=_with_base_flags("--xla_force_host_platform_device_count=2"))
  run_dir = tmp_path / "mesh"
  args = train_args(data_dir, run_dir, 4) + ["--config.mesh.data=2"]
  check(run_cli("experiments.train", args, env2))
  second = check(run_cli("experiments.train", train_args(data_dir, run_dir, 6) + ["--config.mesh.data=2"],
                         env2))
  assert "Resumed from" in second.stderr and "(step 4," in second.stderr
  mesh_records, plain_records = metrics(run_dir), metrics(straight)
  assert [r["step"] for r in mesh_records] == [2, 4, 6]
  for m, p in zip(mesh_records, plain_records):
    assert abs(m["loss"] - p["loss"]) < 0.05 * abs(p["loss"]), (m["loss"], p["loss"])
  # Weights after 4 chunks (resumed onto the mesh from step 4 for the last two): the mesh
  # sums in another order, and a spike flipped by rounding grows in the chaotic dynamics
  # (w_out 0.0085 apart after 6 chunks, 14% of its scale, with the default phase table),
  # so the weights are compared after 4 chunks, where rounding is all that separates them.
  mesh_ts, _ = restore_all(run_dir / "checkpoints" / "checkpoint_step_4")
  plain_ts, _ = restore_all(straight / "checkpoints" / "checkpoint_step_4")
  w_mesh = np.asarray(mesh_ts.params.w_out, np.float32)
  w_plain = np.asarray(plain_ts.params.w_out, np.float32)
  assert np.abs(w_mesh - w_plain).max() < 0.05 * np.abs(w_plain).max() + 1e-6
