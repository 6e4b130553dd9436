#!/usr/bin/env bash
# Runs the test suite once per Keras backend: tensorflow, jax, torch.
# Usage: bash tests/run.sh [extra pytest args]   (default: the fast tests; add -m slow for the rest)
#
# Tests marked `one_backend` run under the first backend only: their result does not depend on
# the backend (decoding, dataset files, command-line checks, run directories, metrics), or they
# run the other backends themselves (tests/test_cross_backend.py compares all three).
# TensorFlow's run prints as it goes; JAX's and then PyTorch's run beside it (most of a test's
# time is one core's: tracing, compiling, Python) and print when they end. TESTS_SERIAL=1 runs
# the three one after the other. Each run ends with its 15 slowest tests.
set -uo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# JAX keeps what it compiles here: the tests (and the processes they start) build the same
# small models again and again, and compile each program once instead of once per process.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$scratch/jax-cache}"

run() {  # run BACKEND [pytest args]: exit status 0 for "no tests selected" (5) too
  local backend=$1
  shift
  echo "=== KERAS_BACKEND=$backend"
  # Each run its own temporary folder (pytest clears the one it is given) and its own numba
  # cache: librosa's compiled functions, written by two processes at once, can be corrupt.
  NUMBA_CACHE_DIR="$scratch/numba-$backend" KERAS_BACKEND=$backend python -m pytest -p no:cacheprovider --durations=15 \
    --basetemp="$scratch/tmp-$backend" "$@"
  local rc=$?
  [ $rc -eq 5 ] && rc=0
  return $rc
}

others() {
  local status=0
  for backend in jax torch; do
    run "$backend" --not-first-backend "$@" || status=$?
  done
  return $status
}

status=0
if [ "${TESTS_SERIAL:-0}" = 1 ]; then
  run tensorflow "$@" || status=$?
  others "$@" || status=$?
else
  others "$@" > "$scratch/others.log" 2>&1 &
  pid=$!
  run tensorflow "$@" || status=$?
  wait $pid || status=$?
  cat "$scratch/others.log"
fi
exit $status
