#!/usr/bin/env bash
# Reproduce Safran & Shamir (ICML 2018): spurious local minima of two-layer ReLU
# teacher-student networks, k = n = d = 6..12, exact population loss, full-batch gradient
# descent from Xavier-normal initialisations, constant step 0.5. See docs/results.md.
# The authors' protocol (step 5/k, k = 6..20, failures named by the exact Hessian) is one
# command: synaprune experiment safran-shamir
# Run from the repository root. Resumable: finished seeds are skipped on rerun.
# Measured: ~15 min for the main sweep (500 seeds x 7 k) on 2 shared cores, --threads 1.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DB=${DB:-out/safran_shamir.db}
LONG_DB=${LONG_DB:-out/safran_shamir_long.db}
SEEDS=${SEEDS:-500}
STEPS=${STEPS:-4000}
LR=${LR:-0.5}
mkdir -p "$(dirname "$DB")"

# 1. Main sweep: seeds 0..SEEDS-1 for each k, 4000 steps of gd with lr 0.5.
for k in 6 7 8 9 10 11 12; do
  echo "== k=$k  $(date -u +%H:%M:%S)" >&2
  "$PY" -m synaprune bench --problem "teacher-student:k=$k" --method "gd:lr=$LR" \
    --seeds "$SEEDS" --steps "$STEPS" --threads 1 --db "$DB" --quiet
done
"$PY" -m synaprune results --db "$DB" --problem teacher-student

# 2. Split the failures into "converged to a spurious minimum" (last recorded gradient norm
#    < 1e-8) and "out of budget", from the stored gradient-norm curves, and check the Hessian
#    of the exact loss at every spurious end point (read-only on the database).
"$PY" scripts/safran_shamir_table.py "$DB" --budget "$STEPS" --method "gd:lr=$LR" --hessian

# 3. Follow-up: rerun the runs that were out of budget in step 2 (with the default settings:
#    k=6 seed 486, k=9 seed 54, k=11 seeds 200 and 451) with a 10x budget.
for ks in 6:486 9:54 11:200 11:451; do
  k=${ks%:*}; s=${ks#*:}
  "$PY" -m synaprune bench --problem "teacher-student:k=$k" --method "gd:lr=$LR" \
    --seed-start "$s" --seeds 1 --steps 40000 --threads 1 --db "$LONG_DB" --quiet
done
"$PY" scripts/safran_shamir_table.py "$LONG_DB" --budget 40000 --method "gd:lr=$LR" --hessian
