#!/usr/bin/env bash
# Every test of netlens, from the repository root or anywhere:
#   1. netlens/ is exactly what the notebooks export (nbdev-export changes nothing),
#   2. the notebooks run and their cells' assertions hold (nbdev-test),
#   3. every notebook is stored executed, its outputs made from its current code (tools/check_notebooks.py),
#   4. pytest tests/ (cross-checks against peers and plain-hook oracles, the docs pages in a browser).
# Both run against the installed netlens (a wheel from `pip install .`, or the checkout after `pip install -e .`);
# a wheel that differs from netlens/ fails here first, so the tests always test what the notebooks export.
# Exits non-zero if any part fails. `bash tools/test.sh --slow` also runs notebook cells marked `#| slow`.
set -uo pipefail
cd "$(dirname "$0")/.."
flags=""; [ "${1:-}" = "--slow" ] && flags="--flags slow"
status=0

echo "== nbdev-export leaves netlens/ unchanged"
before=$(mktemp -d)
cp -r netlens "$before/"
nbdev-export
if diff -r -q -x __pycache__ "$before/netlens" netlens; then echo "in sync"
else echo "FAILED: netlens/ differed from what nbs/ export (now re-exported): commit the notebooks and netlens/ together"; status=1; fi
rm -rf "$before"

echo "== the netlens under test"
installed=$(cd "$(mktemp -d)" && python -c "import netlens, os; print(os.path.dirname(os.path.realpath(netlens.__file__)))")
echo "imported from $installed"
if [ "$installed" != "$(realpath netlens)" ]; then
  if diff -r -q -x __pycache__ netlens "$installed"; then echo "the installed package is netlens/"
  else echo "FAILED: the installed netlens differs from netlens/: reinstall it (pip install ., or pip install -e . to develop)"; status=1; fi
fi

echo "== nbdev-test (notebooks)"
n_nbs=$(find nbs -name '*.ipynb' -not -path '*/.*' -not -name '_*' | wc -l)
log=$(mktemp)
nbdev-test --n-workers 2 --do-print --skip-file-re '^[_.]' $flags 2>&1 | tee "$log"
if grep -qx "Success." "$log"; then failed=0
else failed=$(grep -cE '^\s+\S+\.ipynb$' "$log"); [ "$failed" -eq 0 ] && failed=$n_nbs; status=1; fi
echo "notebooks: $((n_nbs - failed)) passed, $failed failed"
rm -f "$log"

echo "== the notebooks are stored executed, with the outputs of their current code, and read as chapters"
python tools/check_notebooks.py --structure || status=1

echo "== pytest tests/"
# the `pytest` command, not `python -m pytest`: the latter puts the checkout first on sys.path and would hide the wheel
pytest tests/ -q -p no:cacheprovider || status=1
exit $status
