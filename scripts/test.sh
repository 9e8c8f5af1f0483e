#!/usr/bin/env bash
# The test command: the whole suite in fresh virtual environments, one per TransformerLens line
# (the newest 4.x, TransformerBridge only; 3.9, HookedTransformer beside the bridge), plus the
# tutorials (pytest --nbmake), the type checker (mypy), the linter (ruff) and the API reference
# (Sphinx, warnings as errors) under the 4.x line. The suite is tests/unit (seconds) and
# tests/integration; the inner loop of development is `pytest tests/unit`.
#
#   bash scripts/test.sh          # both lines
#   bash scripts/test.sh 4        # only the newest 4.x
#   bash scripts/test.sh 3.9      # only 3.9
#
# Extra pytest arguments go after `--`:  bash scripts/test.sh 4 -- -m "not slow" -x
# TEST_WORKERS=1 runs the suite in one process (TEST_WORKERS=auto: one per core).
# Every step runs even when an earlier one fails; a summary at the end names each step's result,
# and the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

lines=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do lines+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#lines[@]} -eq 0 ] && lines=(4 3.9)
PYTHON=${PYTHON:-python3}
# Everything runs offline: no test or notebook may reach a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

results=()
failed=0
step() {  # step NAME COMMAND...: run it, remember how it went
  local name=$1; shift
  local started=$SECONDS
  echo "=== $name ==="
  if "$@"; then
    results+=("passed  $name ($((SECONDS - started)) s)")
  else
    results+=("FAILED  $name ($((SECONDS - started)) s)")
    failed=1
  fi
}

for line in "${lines[@]}"; do
  case "$line" in
    4) spec="transformer-lens>=4,<5" ;;
    3.9) spec="transformer-lens==3.9.0" ;;
    *) echo "unknown TransformerLens line '$line' (use 4 or 3.9)" >&2; exit 2 ;;
  esac
  venv=".venv-tl$line"
  rm -rf "$venv"
  # constraints.txt pins torch==2.13.0 so that this install takes the same torch everywhere.
  if ! step "install TransformerLens $spec into $venv" \
      bash -c "'$PYTHON' -m venv '$venv' && '$venv/bin/pip' install -q -c constraints.txt -e '.[test]' '$spec'"; then
    continue  # nothing else can run in this line
  fi
  "$venv/bin/python" -c "import importlib.metadata as m; print('transformer-lens', m.version('transformer-lens'), '| torch', m.version('torch'), '| transformers', m.version('transformers'))"
  # The suite runs in $TEST_WORKERS processes (pytest-xdist; 2 by default, one per core of a small CI machine), each
  # test file in one process (module fixtures load once), each process with one torch thread.
  step "tests, TransformerLens $line" env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$venv/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
  if [ "$line" = 4 ]; then
    step "tutorials (nbmake), TransformerLens $line" "$venv/bin/python" -m pytest --nbmake --nbmake-timeout=900 --durations=0 tutorials
    step "type check (mypy lens_digits)" "$venv/bin/python" -m mypy
    step "lint (ruff, docstrings included)" "$venv/bin/ruff" check lens_digits tests benchmarks scripts tutorials
    step "API reference (sphinx -W)" bash -c "'$venv/bin/pip' install -q -c constraints.txt -e '.[docs]' && rm -rf build/docs && '$venv/bin/sphinx-build' -q -W --keep-going -b html docs/api build/docs"
  fi
done

echo
echo "=== summary ==="
printf '%s\n' "${results[@]}"
exit $failed
