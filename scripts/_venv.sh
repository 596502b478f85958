# Sourced by scripts/serve and scripts/test: create .venv and install the project on first use.
# Needs only python3 (3.11+) with the venv module; re-installs when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Honar Switch needs Python 3.11 or newer")'
venv="$root/.venv"
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$1"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment in $venv" >&2
  "$py" -m venv "$venv" || { echo "python3 -m venv failed: install your OS's python3-venv package" >&2; exit 1; }
fi
if [ ! -f "$stamp" ]; then
  echo "installing Honar Switch ($1) into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  if [ "$1" = test ]; then extra=".[test]"; else extra="."; fi
  "$venv/bin/python" -m pip install --quiet -e "$extra" >&2
  rm -f "$venv"/.installed-*-"$1"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
