#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 (jax 0.11.2 needs it), or explains how to get one and fails.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
candidates+=(python3.12)
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -V); do
    p=$(PYENV_VERSION=$v pyenv which python3 2>/dev/null) && candidates+=("$p")
  done
fi
for root in "$HOME/.pyenv/versions" /usr/local/bin /opt/python; do
  for p in "$root"/3.1[2-9]*/bin/python3 "$root"/python3.1[2-9]; do [ -x "$p" ] && candidates+=("$p"); done
done
candidates+=(python3.13 python3)
for c in "${candidates[@]}"; do
  p=$(command -v "$c" 2>/dev/null) || continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: neurogen_jax needs Python >= 3.12 (jax 0.11.2 requires it), and none was found." >&2
echo "  Install one (e.g. 'pyenv install 3.12' or your distribution's python3.12) or point to it: make test PYTHON=/path/to/python3.12" >&2
exit 1
