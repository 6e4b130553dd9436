#!/usr/bin/env bash
# Runs the test suite on each Keras backend: tensorflow, jax, torch.
# Usage: bash tests/run.sh [extra pytest args]   (default: the fast tests; add -m slow for the rest)
#
# Tests marked `one_backend` run once (`--one-backend-run`, tests/conftest.py): their result does not depend on the
# backend (decoding, dataset files, command-line checks, run directories, metrics, parity with
# librosa, which tests/test_cross_backend.py then holds every backend to), or they run the other
# backends themselves (tests/test_cross_backend.py). PyTorch runs them because its eager steps
# cost no tracing or compiling: the same tests took about three times as long on TensorFlow.
# A few whose time is mostly other processes' name the run they go to, `one_backend("jax")`,
# so that the three runs end at about the same time.
# The three backends run at once (most of a test's time is one core's: tracing, compiling,
# Python); TensorFlow's run prints as it goes, the others' when they end. TESTS_SERIAL=1 runs
# them one after the other. Each run ends with its 15 slowest tests.
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

status=0
if [ "${TESTS_SERIAL:-0}" = 1 ]; then
  run torch --one-backend-run "$@" || status=$?
  run tensorflow --one-backend-run "$@" || status=$?
  run jax --one-backend-run "$@" || status=$?
else
  # PyTorch computes on one thread here: its OpenMP threads spin while they wait, and beside
  # two other runs on two cores its tests took 1.5 times as long with two threads as with one.
  OMP_NUM_THREADS=1 run torch --one-backend-run "$@" > "$scratch/torch.log" 2>&1 &
  torch_pid=$!
  run jax --one-backend-run "$@" > "$scratch/jax.log" 2>&1 &
  jax_pid=$!
  run tensorflow --one-backend-run "$@" || status=$?
  wait $torch_pid || status=$?
  wait $jax_pid || status=$?
  cat "$scratch/torch.log" "$scratch/jax.log"
fi
exit $status
