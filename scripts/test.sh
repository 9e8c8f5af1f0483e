#!/usr/bin/env bash
# Run the whole test suite in fresh virtual environments, one per TransformerLens line:
# the newest 4.x (TransformerBridge only) and 3.9 (HookedTransformer beside the bridge).
#
#   bash scripts/test.sh          # both
#   bash scripts/test.sh 4        # only the newest 4.x
#   bash scripts/test.sh 3.9      # only 3.9
#
# Extra pytest arguments go after `--`:  bash scripts/test.sh 4 -- -m "not slow" -x
# Under the 4.x line the tutorials in tutorials/ are executed too (pytest --nbmake).
set -euo pipefail
cd "$(dirname "$0")/.."

lines=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do lines+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#lines[@]} -eq 0 ] && lines=(4 3.9)
PYTHON=${PYTHON:-python3}
# Everything runs offline: no test or notebook may reach a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

for line in "${lines[@]}"; do
  case "$line" in
    4) spec="transformer-lens>=4,<5" ;;
    3.9) spec="transformer-lens==3.9.0" ;;
    *) echo "unknown TransformerLens line '$line' (use 4 or 3.9)" >&2; exit 2 ;;
  esac
  venv=".venv-tl$line"
  echo "=== TransformerLens $spec in $venv ==="
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # constraints.txt pins torch to the CPU build that this install path expects.
  "$venv/bin/pip" install -q -c constraints.txt -e ".[test]" "$spec"
  "$venv/bin/python" -c "import transformer_lens, importlib.metadata as m; print('transformer-lens', m.version('transformer-lens'), '| torch', m.version('torch'))"
  "$venv/bin/python" -m pytest "$@"
  # The tutorials run under the newest TransformerLens only.
  if [ "$line" = 4 ] && compgen -G "tutorials/*.ipynb" > /dev/null; then
    "$venv/bin/python" -m pytest --nbmake tutorials
  fi
done
