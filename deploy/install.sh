#!/bin/sh
# Installs SegNode into a virtual environment (default ./.venv) with the machine's own Python 3.11/3.12.
#
# Debian 12 and Ubuntu 24.04 mark their Python "externally managed" (PEP 668): a plain `pip install .` is
# refused there, so SegNode always goes into a virtual environment. Where the distribution splits the venv
# module into the python3-venv package (Debian, Ubuntu), this script installs it with apt-get (sudo when not
# root) the first time creating the environment fails.
#
#   sh deploy/install.sh            # then: .venv/bin/segnode serve
#
# Settings (environment):
#   SEGNODE_PYTHON   the interpreter (default: python3 on PATH)
#   SEGNODE_VENV     where the environment goes (default: .venv beside this repository's pyproject.toml)
#   SEGNODE_TORCH    how pip gets PyTorch (default: torch, which on Linux x86_64 is a CUDA build); on a
#                    CPU-only machine e.g. SEGNODE_TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
set -eu
cd "$(dirname "$0")/.."
PYTHON="${SEGNODE_PYTHON:-python3}"
VENV="${SEGNODE_VENV:-.venv}"
TORCH="${SEGNODE_TORCH:-torch}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found; install Python 3.11 or 3.12 (Debian/Ubuntu: apt-get install python3)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; raise SystemExit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
    echo "install.sh: SegNode needs Python 3.11 or 3.12; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if command -v apt-get >/dev/null 2>&1; then
            SUDO=""
            [ "$(id -u)" -ne 0 ] && SUDO="sudo"
            minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            echo "install.sh: the venv module is missing; installing python3-venv and python$minor-venv" >&2
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
                python3-venv "python$minor-venv" || \
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
        fi
        "$PYTHON" -m venv "$VENV" || {
            echo "install.sh: cannot create a virtual environment with $PYTHON (install its venv module)" >&2
            exit 1
        }
    fi
fi

# shellcheck disable=SC2086  # SEGNODE_TORCH may carry pip options
"$VENV/bin/python" -m pip install -q $TORCH
"$VENV/bin/python" -m pip install -q .
echo "SegNode installed in $VENV: start it with $VENV/bin/segnode serve"
