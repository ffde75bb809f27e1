"""Reliability of training runs: rollback after non-finite chunks, failed checkpoint writes,
crashes (SIGKILL) at random points.

Rollback: non-finite chunks are counted and logged; K in a row restore the last checkpoint
with a lowered learning rate; without a checkpoint the run stops with a clear error.

Non-finite chunks are forced in-process: `learning.train_chunk` is wrapped so that, while
the optimizer's learning rate is above a threshold and the step is in a window, it returns
what the real finiteness guard returns (the input state with `step + 1`, `finite=False`,
NaN loss). Everything else (Trainer, checkpoints, data iterator) is the real code.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.configs import tiny
from neurogen_jax import checkpoint, learning
from neurogen_jax import train as train_lib

TEXTS = ["Alpha beta gamma delta. " * 20, "Second document; with more words. " * 10] * 8


def _lr(ts):
  return float(optax.tree_utils.tree_get(ts.opt_state, "learning_rate"))


class FlakyChunk:
  """`learning.train_chunk` that fails (like the guard) for input steps in `bad_steps`
  while the learning rate is above `lr_above`; records every call."""

  def __init__(self, bad_steps, lr_above):
    self.real = learning.train_chunk
    self.bad_steps, self.lr_above = set(bad_steps), lr_above
    self.calls = []  # (input step, learning rate, inputs_BxL, w_out) per call

  def __call__(self, ts, inputs_BxL, targets_BxL, **kwargs):
    step, lr = int(ts.step), _lr(ts)
    self.calls.append((step, lr, np.asarray(inputs_BxL), np.asarray(ts.params.w_out)))
    new_ts, metrics = self.real(ts, inputs_BxL, targets_BxL, **kwargs)
    if step in self.bad_steps and lr > self.lr_above:
      return ts._replace(step=ts.step + 1), metrics._replace(finite=jnp.bool_(False),
                                                             loss=jnp.float32(jnp.nan))
    return new_ts, metrics


def make_config(run_dir, max_chunks, **train):
  config = tiny.get_config()
  config.run_dir = str(run_dir)
  config.train.max_chunks = max_chunks
  config.train.log_interval = 1
  config.train.checkpoint_interval = 2
  config.train.keep_checkpoints = 0
  for key, value in train.items():
    config.train[key] = value
  return config


def records(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_nonfinite_chunks_roll_back_and_halve_the_lr(tmp_path, monkeypatch, capsys):
  # Chunks 4, 5, 6 (input steps 3, 4, 5) fail at lr 1e-2; after the rollback to step 2
  # the rate is 5e-3 and they pass.
  flaky = FlakyChunk(bad_steps={3, 4, 5}, lr_above=6e-3)
  monkeypatch.setattr(learning, "train_chunk", flaky)
  result = train_lib.Trainer(make_config(tmp_path, 8), dataset=TEXTS).train()
  err = capsys.readouterr().err

  assert (result.step, result.stopped) == (8, "max_chunks")
  steps = [c[0] for c in flaky.calls]
  assert steps == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]  # back to the checkpoint's step 2
  lrs = [c[1] for c in flaky.calls]
  assert lrs[:6] == [pytest.approx(1e-2)] * 6 and lrs[6:] == [pytest.approx(5e-3)] * 6
  # The restored state and data position are the checkpoint's: call 6 repeats call 2.
  np.testing.assert_array_equal(flaky.calls[6][2], flaky.calls[2][2])
  np.testing.assert_array_equal(flaky.calls[6][3], flaky.calls[2][3])
  assert not np.array_equal(flaky.calls[7][3], flaky.calls[3][3])  # then a new lr's update

  for k, step in enumerate((4, 5, 6), start=1):
    assert f"step {step}: non-finite values (loss nan); update skipped ({k} of 3 in a row" in err
  assert (f"Rolled back to {tmp_path / 'checkpoints' / 'checkpoint_step_2'} (step 2) after 3 "
          "chunks in a row (steps 4..6)") in err
  assert "learning rate 0.01 -> 0.005 (rollback 1)" in err

  events = [r for r in records(tmp_path) if "event" in r]
  assert [(r["event"], r["step"]) for r in events] == [
      ("nonfinite_skip", 4), ("nonfinite_skip", 5), ("nonfinite_skip", 6), ("rollback", 2)]
  assert [r["in_a_row"] for r in events[:3]] == [1, 2, 3] and events[0]["loss"] is None
  assert events[3]["from_step"] == 6 and events[3]["learning_rate"] == pytest.approx(5e-3)
  # Statistics records: one per step, those of the abandoned steps 3..6 replaced.
  stats = [r for r in records(tmp_path) if "event" not in r]
  assert [r["step"] for r in stats] == list(range(1, 9))
  assert [r["learning_rate"] for r in stats] == [pytest.approx(1e-2)] * 2 + [
      pytest.approx(5e-3)] * 6
  # (Step 4 was not saved inside the streak, or the rollback would have gone there.)
  assert [c.step for c in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [2, 4, 6, 8]
  meta = checkpoint.read_metadata(tmp_path / "checkpoints" / "checkpoint_step_8")
  assert meta["rollbacks"] == 1 and meta["learning_rate"] == pytest.approx(5e-3)

  # The lowered rate survives a resume (the config's rate is unchanged).
  flaky.calls.clear()
  resumed = train_lib.Trainer(make_config(tmp_path, 10), dataset=TEXTS)
  assert resumed.learning_rate == pytest.approx(5e-3) and resumed.rollbacks == 1
  assert resumed.train().step == 10
  assert [c[1] for c in flaky.calls] == [pytest.approx(5e-3)] * 2


def test_nonfinite_without_a_checkpoint_stops_clearly(tmp_path, monkeypatch):
  monkeypatch.setattr(learning, "train_chunk", FlakyChunk(bad_steps=range(100), lr_above=0))
  trainer = train_lib.Trainer(make_config(tmp_path, 8, checkpoint_interval=5,
                                          max_nonfinite_chunks=2), dataset=TEXTS)
  with pytest.raises(train_lib.TrainingDivergedError) as e:
    trainer.train()
  message = str(e.value)
  assert "2 chunks in a row (steps 1..2) produced non-finite values" in message
  assert f"{tmp_path / 'checkpoints'} holds no checkpoint to roll back to" in message
  assert "Lower train.learning_rate (now 0.01)" in message
  assert checkpoint.list_checkpoints(tmp_path / "checkpoints") == []


def test_repeated_rollbacks_without_progress_stop(tmp_path, monkeypatch):
  # Steps 2+ always fail: rollback 1 (lr 5e-3), rollback 2 (2.5e-3), then the limit.
  flaky = FlakyChunk(bad_steps=range(2, 100), lr_above=0)
  monkeypatch.setattr(learning, "train_chunk", flaky)
  trainer = train_lib.Trainer(make_config(tmp_path, 8, max_nonfinite_chunks=1, max_rollbacks=2),
                              dataset=TEXTS)
  with pytest.raises(train_lib.TrainingDivergedError, match=r"after 2 rollbacks to .*"
                     r"checkpoint_step_2 without reaching a new checkpoint \(train.max_rollbacks=2\)"):
    trainer.train()
  assert [c[1] for c in flaky.calls] == [pytest.approx(v) for v in (1e-2, 1e-2, 1e-2, 5e-3,
                                                                    2.5e-3)]


@pytest.mark.parametrize("field, value, message", [
    ("max_nonfinite_chunks", 0, r"train.max_nonfinite_chunks must be >= 1 .* got 0"),
    ("rollback_lr_factor", 0.0, r"train.rollback_lr_factor must be in \(0, 1\] .* got 0.0"),
    ("rollback_lr_factor", 1.5, r"train.rollback_lr_factor must be in \(0, 1\] .* got 1.5"),
    ("max_rollbacks", -1, r"train.max_rollbacks must be >= 0, got -1"),
])
def test_rollback_settings_are_checked(tmp_path, field, value, message):
  with pytest.raises(train_lib.ConfigError, match=message):
    train_lib.Trainer(make_config(tmp_path, 1, **{field: value}), dataset=TEXTS)


def test_disk_full_during_training_stops_clearly_and_the_run_resumes(tmp_path, monkeypatch):
  real_save, saves = ocp.Checkpointer.save, []

  def save_then_fill_disk(self, *args, **kwargs):
    saves.append(1)
    if len(saves) > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, *args, **kwargs)

  monkeypatch.setattr(ocp.Checkpointer, "save", save_then_fill_disk)
  trainer = train_lib.Trainer(make_config(tmp_path, 6), dataset=TEXTS)
  with pytest.raises(checkpoint.CheckpointError) as e:
    trainer.train()
  monkeypatch.undo()
  root = tmp_path / "checkpoints"
  assert f"{root}: cannot write checkpoint step 4 (OSError: [Errno {errno.ENOSPC}]" in str(e.value)
  assert f"The previous checkpoint {root / 'checkpoint_step_2'} is intact." in str(e.value)
  assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # nothing half-written
  # Space freed: the same run resumes from step 2 and finishes.
  resumed = train_lib.Trainer(make_config(tmp_path, 6), dataset=TEXTS)
  assert resumed.step == 2
  assert resumed.train().step == 6
  assert [c.step for c in checkpoint.list_checkpoints(root)] == [2, 4, 6]


# --------------------------------------------------------------------------- crash test

REPO = Path(__file__).resolve().parents[1]
CRASH_CHUNKS, CRASH_CKPT_EVERY = 20, 2
CRASH_DOCS = ["The cat sat on the mat. " * 6, "A dog ran in the fog; " * 5,
              "Rain falls on the plain, " * 7, "Birds sing in spring. " * 4,
              "Fish swim and dim. " * 9, "Stars shine at nine. " * 3]


class TrainProcess:
  """`python -m experiments.train` in the background; stderr lines collected by a thread."""

  def __init__(self, run_dir, data_dir, env):
    args = ["--config=tiny", f"--config.data.files={data_dir}", f"--run_dir={run_dir}",
            f"--config.train.max_chunks={CRASH_CHUNKS}", "--config.train.log_interval=1",
            f"--config.train.checkpoint_interval={CRASH_CKPT_EVERY}",
            "--config.train.keep_checkpoints=3"]
    self.proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                                 env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                    daemon=True)
    self._reader.start()

  def wait_for(self, predicate, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      if predicate():
        return
      if self.proc.poll() is not None:
        raise AssertionError(f"exited {self.proc.returncode} early:\n{self.stderr}")
      time.sleep(0.01)
    self.kill()
    raise AssertionError(f"timed out:\n{self.stderr}")

  def kill(self):
    self.proc.send_signal(signal.SIGKILL)
    self.finish()

  def finish(self, timeout=300):
    self.proc.wait(timeout)
    self._reader.join(10)
    return self.proc.returncode

  @property
  def stderr(self):
    return "".join(self.lines)

  def logged_steps(self):
    return [int(line.split()[1]) for line in self.lines if line.startswith("step ")
            and line.split()[2] == "|"]


def _half_written_save(root):
  """A hidden save directory that holds all its files but was not renamed yet."""
  return [p for p in root.glob(".tmp-checkpoint_step_*") if (p / "metadata.json").is_file()] \
      if root.is_dir() else []


_restore_cli_checkpoint = checkpoint.restore_training_run


def _deterministic(records):
  drop = ("elapsed_s", "tokens_per_s", "loss_avg")
  return [{k: v for k, v in r.items() if k not in drop} for r in records]


@pytest.mark.slow
def test_sigkill_at_random_points_loses_at_most_a_checkpoint_interval_and_resumes_exactly(
    tmp_path):
  data_dir = tmp_path / "texts"
  data_dir.mkdir()
  for i, text in enumerate(CRASH_DOCS):
    (data_dir / f"{i}.txt").write_text(text)
  # JAX_COMPILATION_CACHE_DIR: the run's shared cache (conftest), which the tests above
  # filled with these programs (the same tiny config, batch and chunk).
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             NEUROGEN_CACHE=str(tmp_path / "cache"))
  straight_dir, crashed_dir = tmp_path / "straight", tmp_path / "crashed"
  straight = TrainProcess(straight_dir, data_dir, env)
  assert straight.finish() == 0, straight.stderr
  root = crashed_dir / "checkpoints"

  rng = random.Random(0)
  plan = ["after_step", "in_save", "at_time", "after_step", "in_save"]
  killed_in_save = 0
  for how in plan:
    resume_from = checkpoint.latest_checkpoint(root)
    run_env = dict(env, **({checkpoint.TEST_SAVE_DELAY_ENV: "2"} if how == "in_save" else {}))
    run = TrainProcess(crashed_dir, data_dir, run_env)
    start_step = resume_from.step if resume_from else 0
    if how == "after_step":
      target = start_step + rng.randint(1, 4)
      run.wait_for(lambda: target in run.logged_steps())
      time.sleep(rng.uniform(0, 0.3))
    elif how == "in_save":
      run.wait_for(lambda: _half_written_save(root))
    else:
      time.sleep(rng.uniform(0.5, 6.0))  # start-up, restore or the first chunks
    run.kill()
    # A partial checkpoint is never read: this run resumed from the newest complete one
    # (a random-time kill may land before the restore, on a loaded machine still in
    # start-up: then it logged nothing and must have written nothing)...
    if how == "at_time" and not run.logged_steps() and "Resumed from" not in run.stderr:
      assert checkpoint.latest_checkpoint(root) == resume_from
    elif resume_from is not None:
      assert f"Resumed from {resume_from.path} (step {resume_from.step}," in run.stderr
    # ...and every directory that looks complete is (its files match the manifest).
    complete = checkpoint.list_checkpoints(root)
    for info in complete:
      checkpoint.verify(info.path)
    latest = complete[-1].step if complete else 0
    if how == "in_save":
      hidden = _half_written_save(root)
      assert hidden and all(int(p.name.split("_")[2].split("-")[0]) > latest for p in hidden)
      killed_in_save += 1
    # At most the chunks since the last complete checkpoint are lost.
    logged = run.logged_steps()
    if logged:
      assert max(logged) - latest <= CRASH_CKPT_EVERY, (how, logged, latest)

  final = TrainProcess(crashed_dir, data_dir, env)
  assert final.finish() == 0, final.stderr
  assert killed_in_save == 2
  assert not list(root.glob(".tmp-*"))  # the next save removed the leftovers

  ours, rng_ours = _restore_cli_checkpoint(root / f"checkpoint_step_{CRASH_CHUNKS}")
  theirs, rng_theirs = _restore_cli_checkpoint(
      straight_dir / "checkpoints" / f"checkpoint_step_{CRASH_CHUNKS}")
  leaves = jax.tree_util.tree_flatten_with_path(theirs)[0]
  differing = [jax.tree_util.keystr(path) for (path, a), b in zip(leaves, jax.tree.leaves(ours))
               if not np.array_equal(np.asarray(a), np.asarray(b))]
  assert not differing, f"the crashed run differs from the straight run in {differing}"
  np.testing.assert_array_equal(rng_ours, rng_theirs)
  assert (checkpoint.read_data_state(root / f"checkpoint_step_{CRASH_CHUNKS}")
          == checkpoint.read_data_state(straight_dir / "checkpoints"
                                        / f"checkpoint_step_{CRASH_CHUNKS}"))
  ours_metrics = _deterministic(records(crashed_dir))
  assert [r["step"] for r in ours_metrics] == list(range(1, CRASH_CHUNKS + 1))
  assert ours_metrics == _deterministic(records(straight_dir))
