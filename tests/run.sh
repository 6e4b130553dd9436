#!/usr/bin/env bash
# Runs the test suite once per Keras backend: tensorflow, jax, torch.
# Usage: bash tests/run.sh [extra pytest args]   (default: the fast tests; add -m slow for the rest)
#
# Files whose tests do not depend on the backend they run under run once, on the first:
# test_cross_backend.py runs the other backends itself (in subprocesses) and compares them;
# the dataset builder and the package build use no Keras backend; the docs' examples call the
# library, whose results on every backend the other files check.
set -uo pipefail
cd "$(dirname "$0")/.."
ONCE=(tests/test_cross_backend.py tests/test_build_sampled_dataset.py tests/test_docs.py
      tests/test_package.py)
status=0
ignore=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -p no:cacheprovider "${ignore[@]}" "$@"
  rc=$?
  # Exit code 5 means "no tests selected" (e.g. -m slow before any slow test exists).
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
  ignore=("${ONCE[@]/#/--ignore=}")
done
exit $status
