#!/usr/bin/env bash
# Create .venv in the repository root (with the system python3) if it is missing, and install
# scdask into it in editable mode with the test extras. Re-running is cheap: the install is
# skipped while pyproject.toml is unchanged since the last successful install.
#
# Environment: PYTHON (interpreter for the venv, default python3), SCDASK_EXTRAS (default test),
# SCDASK_VENV (the venv's folder, default .venv; `make test` makes .venv312 with the interop
# extra for the Python 3.12 run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/${SCDASK_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${SCDASK_EXTRAS:-test}"
STAMP="${VENV}/.scdask-installed"

log() { printf 'setup: %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null 2>&1 || {
    log "error: '$PYTHON' not found; install Python >= 3.11 or set PYTHON=/path/to/python3"
    exit 1
}

if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating ${VENV} with $("$PYTHON" --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        log "error: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
        exit 1
    fi
fi

want="$(cat "${ROOT}/pyproject.toml" <(echo "extras=${EXTRAS}") | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "${VENV}/bin/python" -c "import scdask" 2>/dev/null; then
    log "${VENV} is up to date"
    exit 0
fi

log "installing scdask[${EXTRAS}] (editable) into ${VENV}"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet -e "${ROOT}[${EXTRAS}]"
echo "$want" >"$STAMP"
log "done: ${VENV}/bin/python -c 'import scdask' works"
