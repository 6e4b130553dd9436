#!/usr/bin/env bash
# Runs the test suite once per Keras backend: tensorflow, jax, torch.
# Usage: bash tests/run.sh [extra pytest args]   (default: the fast tests; add -m slow for the rest)
#
# Tests marked `one_backend` run under the first backend only: their result does not depend on
# the backend (decoding, dataset files, command-line checks, run directories, metrics), or they
# run the other backends themselves (tests/test_cross_backend.py compares all three).
# Each run ends with its 15 slowest tests.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
repeat=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -p no:cacheprovider --durations=15 "${repeat[@]}" "$@"
  rc=$?
  # Exit code 5 means "no tests selected" (e.g. -m slow before any slow test exists).
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
  repeat=(--not-first-backend)
done
exit $status
