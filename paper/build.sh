#!/usr/bin/env bash
# Build paper/main.pdf from paper/*.tex and paper/generated/ (written by experiments/fewest_steers/analyze.py).
#   bash paper/build.sh
# Needs pdflatex with booktabs; on a fresh Debian/Ubuntu machine it installs TeX Live from the
# distribution's registry when run as root (otherwise it says what to install).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v pdflatex >/dev/null 2>&1 || ! kpsewhich booktabs.sty >/dev/null 2>&1; then
    packages="texlive-latex-base texlive-latex-recommended texlive-fonts-recommended"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
    else
        echo "pdflatex (with booktabs) is missing: install $packages" >&2
        exit 1
    fi
fi
# Twice: the second pass resolves references. Output goes to a temporary folder, the PDF here.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for _ in 1 2; do
    pdflatex -interaction=nonstopmode -halt-on-error -output-directory "$tmp" main.tex >"$tmp/log.txt" || {
        tail -40 "$tmp/log.txt" >&2; exit 1; }
done
cp "$tmp/main.pdf" main.pdf
echo "paper/main.pdf ($(wc -c <main.pdf) bytes)"
