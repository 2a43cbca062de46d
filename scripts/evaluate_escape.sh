#!/bin/bash
# First evaluation of the escape preset against gd at the same rate (docs/noise-escape.md):
# seeds 0-199, 2000 steps, lr = 5/k; one database per problem under OUT.
# Usage: scripts/evaluate_escape.sh [OUT]   (then: python scripts/escape_report.py OUT/e8.db ...)
set -euo pipefail
OUT=${1:-out/escape_evaluation}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
for cell in "teacher-student:k=8 0.625 e8" "teacher-student:k=12 0.4167 e12" \
            "teacher-student:k=8,exact=false,N=2000 0.625 s8"; do
  set -- $cell
  "$SP" bench --problem "$1" --method "gd:lr=$2,synaprune-escape:lr=$2" --seeds 200 \
    --seed-start 0 --steps 2000 --db "$OUT/$3.db" --defaults plain --batch-seeds 200
done
