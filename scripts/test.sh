#!/usr/bin/env bash
# What CI runs: set everything up, then lint, type-check, check import contracts
# and run the whole test suite. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m 'not integration'
#   bash scripts/test.sh tests/integration -x
# Fails fast; the exit code is that of the first failing step (pytest's own code,
# including 5 = "no tests collected", when it is pytest that fails).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/setup.sh"

# Only lint the directories that exist (git does not keep empty ones).
lint_dirs=()
for d in drainctl tests bench examples; do
    if [ -d "$d" ]; then lint_dirs+=("$d"); fi
done

echo "[test] ruff check ${lint_dirs[*]}"
.venv/bin/ruff check "${lint_dirs[@]}"

echo "[test] mypy"
.venv/bin/mypy

echo "[test] lint-imports"
.venv/bin/lint-imports

echo "[test] the pure core is fully covered by its own tests"
.venv/bin/coverage run --source=drainctl/core -m pytest -q -p no:cacheprovider tests/core
.venv/bin/coverage report --fail-under=100 --skip-covered

# The core tests just ran; by default the rest runs on two pytest-xdist workers: integration tests
# mostly wait on real workers and brokers, and every test has its own vhost, queues, ports and
# controller id, so two at a time share the machine safely. DRAINCTL_TEST_WORKERS=0 runs serially.
if [ $# -eq 0 ]; then
    set -- --ignore=tests/core
fi
workers="${DRAINCTL_TEST_WORKERS:-2}"
echo "[test] pytest -n $workers $*"
exec .venv/bin/python -m pytest -q -n "$workers" "$@"
