#!/usr/bin/env bash
# Runs the test suite once per Keras backend: tensorflow, jax, torch.
# Usage: bash tests/run.sh [extra pytest args]   (default: the fast tests; add -m slow for the rest)
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -p no:cacheprovider "$@"
  rc=$?
  # Exit code 5 means "no tests selected" (e.g. -m slow before any slow test exists).
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
done
exit $status
