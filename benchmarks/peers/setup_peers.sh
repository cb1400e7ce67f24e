#!/usr/bin/env bash
# Create the peer virtual environments used to generate reference data and to benchmark
# against the peers. They live in .peers/ (git-ignored) at the repository root and are
# separate from the project venv because the peers pin conflicting e3nn versions:
#   mace-torch 0.3.x pins e3nn==0.4.4; nequip 0.19 needs e3nn>=0.6,<0.7 (so does equimd).
#
# Usage:  bash benchmarks/peers/setup_peers.sh [mace|nequip|all|NAME]   (default: mace)
#
# NAME: any other peer is described by benchmarks/peers/venvs/NAME.txt, a pip requirements file
# whose first line is `# check: <python statement>` (what must run in the finished venv).
#
# Idempotent: a venv whose peer package already imports is left alone.
# torch==2.9.1 matches the project's pin (see pyproject.toml) so that numbers are comparable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="$ROOT/.peers"
PYTHON="${PYTHON:-python3}"
TARGET="${1:-mace}"

# make_venv NAME IMPORT_CHECK PIP_ARGS...
make_venv() {
    local name="$1" check="$2"
    shift 2
    local venv="$PEERS/$name"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "[setup_peers] $venv already set up: skipping"
        return 0
    fi
    echo "[setup_peers] creating $venv"
    mkdir -p "$PEERS"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip
    "$venv/bin/python" -m pip install "$@"
    "$venv/bin/python" -c "$check"
    echo "[setup_peers] $venv ready"
}

setup_mace() {
    # `import mace` must come before `import e3nn` with torch >= 2.6 and e3nn 0.4.4
    # (mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1; e3nn 0.4.4 torch.loads pickled constants).
    make_venv mace "import mace, mace.modules, e3nn, ase" \
        torch==2.9.1 mace-torch ase
}

setup_nequip() {
    make_venv nequip "import nequip, nequip.model, e3nn, ase" \
        torch==2.9.1 nequip ase
}

# setup_from_requirements NAME: the venv .peers/NAME from benchmarks/peers/venvs/NAME.txt.
# Besides pip requirement lines, the file may hold comment lines
#   # build-constraint: SPEC   a constraint for building the no-deps packages (e.g. cython<3)
#   # no-deps: SPEC            a package installed afterwards with --no-deps
# for what a requirements file cannot express.
setup_from_requirements() {
    local name="$1" requirements="$ROOT/benchmarks/peers/venvs/$1.txt" check constraints spec
    check="$(sed -n '1s/^# check: //p' "$requirements")"
    if [[ -z "$check" ]]; then
        echo "[setup_peers] $requirements: the first line must be '# check: <python statement>'" >&2
        exit 2
    fi
    local venv="$PEERS/$name"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "[setup_peers] $venv already set up: skipping"
        return 0
    fi
    constraints="$(mktemp)"
    sed -n 's/^# build-constraint: //p' "$requirements" > "$constraints"
    # the requirement lines first (the check may need the no-deps packages: it runs at the end)
    mkdir -p "$PEERS"
    [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip
    "$venv/bin/python" -m pip install -r "$requirements"
    while read -r spec; do
        [[ -n "$spec" ]] || continue
        # pip >= 25.3 applies build constraints only through --build-constraint / PIP_BUILD_CONSTRAINT
        PIP_CONSTRAINT="$constraints" PIP_BUILD_CONSTRAINT="$constraints" \
            "$venv/bin/python" -m pip install --no-deps "$spec"
    done < <(sed -n 's/^# no-deps: //p' "$requirements")
    rm -f "$constraints"
    "$venv/bin/python" -c "$check"
    echo "[setup_peers] $venv ready"
}

case "$TARGET" in
    mace) setup_mace ;;
    nequip) setup_nequip ;;
    all) setup_mace; setup_nequip ;;
    *)
        if [[ -f "$ROOT/benchmarks/peers/venvs/$TARGET.txt" ]]; then
            setup_from_requirements "$TARGET"
        else
            known="$(cd "$ROOT/benchmarks/peers/venvs" 2>/dev/null && ls -- *.txt 2>/dev/null | sed 's/\.txt$//' | tr '\n' '|')"
            echo "usage: $0 [mace|nequip|all|${known%|}]" >&2
            exit 2
        fi
        ;;
esac
