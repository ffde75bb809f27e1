"""experiments/long_run.py on a few thousand tokens: the JSON has every field, the rates
stay inside the homeostatic band, every weight stays finite."""

import json
import os
import subprocess
import sys
from pathlib import Path

from neurogen_jax.config import AREA_NAMES
from neurogen_jax.plasticity import PlasticityConfig

REPO = Path(__file__).resolve().parents[1]
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; "
        "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ")


def test_long_run_records_finite_weights_rates_in_band_and_dopamine(tmp_path):
  (tmp_path / "play.txt").write_text(TEXT * 40)
  out = tmp_path / "long.json"
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.long_run", "--tokens=2000", "--record_every=10",
       f"--out={out}", f"--data_files={tmp_path / 'play.txt'}", "--compilation_cache="],
      cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  settings, records, summary = result["settings"], result["records"], result["summary"]

  assert settings["mechanisms"] == {m: True for m in ("eprop", "stdp", "dopamine", "tagging",
                                                      "homeostasis", "replay")}
  assert settings["rate_band"] == list(PlasticityConfig().rate_band)
  assert (settings["neurons"], settings["batch_size"], settings["chunk_len"]) == (2496, 4, 16)
  assert settings["tokens"] == 32 * 64  # 2,000 tokens round up to whole 64-token chunks
  assert [r["chunk"] for r in records] == [10, 20, 30, 32]
  assert [r["tokens"] for r in records] == [640, 1280, 1920, 2048]
  lo, hi = settings["rate_band"]
  for r in records:
    assert r["weights_finite"] is True and r["nonfinite_chunks"] == 0
    assert set(r["rates"]) == set(r["rates_in_band"]) == set(AREA_NAMES)
    assert all(lo <= rate <= hi for rate in r["rates"].values()), r["rates"]
    assert all(r["rates_in_band"].values())
    assert 0 <= r["neurons_outside_band"] < 0.05
    assert 0.5 < r["loss"] < 6.0  # nats/token; ln 257 = 5.55
    assert abs(r["dopamine_mean"]) < 1 and 0 < r["dopamine_std"] < 2
  assert records[-1]["loss"] < records[0]["loss"]  # the readout learns the repeated text
  assert summary["weights_always_finite"] is True and summary["nonfinite_chunks"] == 0
  assert summary["areas_always_in_band"] == {a: True for a in AREA_NAMES}
  assert summary["first_loss"] == records[0]["loss"] and summary["last_loss"] == records[-1]["loss"]
  assert "weights always finite: yes" in proc.stdout
  assert f"written to {out}" in proc.stdout
