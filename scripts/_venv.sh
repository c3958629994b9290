# shellcheck shell=bash
# Sourced by scripts/test, scripts/run and .ci/run: makes ./.venv exist and hold an
# up-to-date editable install of this checkout. Needs only Python >= 3.11 and pip's index.
#
#   source scripts/_venv.sh
#   stageline_venv test     # extras to install: "test" or "" (runtime only)
#
# Override the interpreter with STAGELINE_PYTHON=/path/to/python3.x.

STAGELINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$STAGELINE_ROOT/.venv"
STAMP="$VENV/.stageline-install"

_stageline_die() {
    echo "stageline: $*" >&2
    exit 1
}

_stageline_is_311() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# STAGELINE_PYTHON if set, else the first of python3, python3.13, ... that is >= 3.11
_stageline_python() {
    if [[ -n "${STAGELINE_PYTHON:-}" ]]; then
        _stageline_is_311 "$STAGELINE_PYTHON" \
            || _stageline_die "STAGELINE_PYTHON=$STAGELINE_PYTHON does not run as Python >= 3.11"
        command -v "$STAGELINE_PYTHON"
        return 0
    fi
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && _stageline_is_311 "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    local found="none"
    if command -v python3 >/dev/null 2>&1; then
        found="$(python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo unknown)"
    fi
    _stageline_die "needs Python >= 3.11 (python3 here is: $found); install it or set STAGELINE_PYTHON"
}

_stageline_hash() {
    "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
        "$STAGELINE_ROOT/pyproject.toml"
}

# stageline_venv EXTRAS: create .venv if needed, (re)install when pyproject.toml changed
stageline_venv() {
    local extras="${1:-}"
    cd "$STAGELINE_ROOT"
    if ! _stageline_is_311 "$VENV/bin/python"; then
        local python
        python="$(_stageline_python)"
        echo "stageline: creating .venv with $python ($("$python" -V 2>&1))" >&2
        # --clear: a .venv left by another Python or another path is replaced, not patched
        "$python" -m venv --clear "$VENV" || _stageline_die "could not create .venv (on Debian/Ubuntu: apt install python3-venv)"
    fi

    # the stamp holds "<sha256 of pyproject.toml> <extras>"; "test" covers ""
    local want have_hash have_extras
    want="$(_stageline_hash)"
    read -r have_hash have_extras 2>/dev/null <"$STAMP" || true
    if [[ "${have_hash:-}" == "$want" && ( -z "$extras" || "${have_extras:-}" == "$extras" ) ]]; then
        return 0
    fi

    local spec="."
    if [[ -n "$extras" ]]; then
        spec=".[$extras]"
    fi
    echo "stageline: installing -e '$spec' into .venv (pyproject.toml changed or first run)" >&2
    rm -f "$STAMP"
    local started=$SECONDS
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install --quiet --editable "$spec" \
        || _stageline_die "pip install -e '$spec' failed"
    echo "$want $extras" >"$STAMP"
    echo "stageline: installed in $((SECONDS - started))s" >&2
}
