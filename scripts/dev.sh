#!/usr/bin/env bash
# Sets up a virtualenv (once, and again when pyproject.toml changes), then:
#   scripts/dev.sh demo [dcd demo options]   a whole cluster on this machine, simulated GPUs
#   scripts/dev.sh test [pytest options]     ruff, mypy and the whole test suite
#   scripts/dev.sh setup                     only the set-up
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing mosquitto (the tests run a real broker)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "note: mosquitto is not installed; the demo embeds amqtt, the tests need mosquitto" >&2
  fi
fi

if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
  && [ ! -d /run/systemd/system ]; then
  # promtool lints a real /metrics scrape in the tests (skipped without it); Debian ships it
  # in the prometheus package. Only where systemd does not run (CI, containers): elsewhere the
  # package would also start a Prometheus server. Best effort: without it the lint skips.
  echo "installing prometheus (for promtool)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus >/dev/null) || echo "note: promtool not installed" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.dcsched-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch first and pinned to the CPU build: an unpinned torch pulls GBs of CUDA packages.
  python -m pip install -q --disable-pip-version-check "torch==2.13.0" numpy
  python -m pip install -q --disable-pip-version-check -e ".[all,dev]"
  touch "$stamp"
fi

cmd=${1:-setup}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec dcd demo "$@" ;;
  test)
    ruff check .
    ruff format --check .
    mypy
    exec python -m pytest "$@"
    ;;
  setup) echo "ready: . $VENV/bin/activate" ;;
  *) echo "usage: scripts/dev.sh demo|test|setup" >&2; exit 2 ;;
esac
