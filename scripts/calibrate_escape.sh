#!/bin/bash
# Calibration of SynaPrune's escape preset (docs/tuning.md, "The escape preset"):
# held-out seeds 10000-10031, 2000 steps, lr = 5/k, one database per problem under OUT.
# Usage: scripts/calibrate_escape.sh [OUT]   (then: python scripts/escape_report.py OUT/e8.db ...)
set -euo pipefail
OUT=${1:-out/escape_calibration}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
for cell in "teacher-student:k=8 0.625 e8" "teacher-student:k=12 0.4167 e12" \
            "teacher-student:k=8,exact=false,N=2000 0.625 s8"; do
  set -- $cell
  M="gd:lr=$2"
  # 0.3 and 0.6 of the budget, and 0.8: the protocol's extension beyond the grid's end
  for s in 0.1 0.2 0.4; do for T in 600 1200; do
    M="$M,synaprune-b:lr=$2,noise=$s,noise_schedule=linear,noise_steps=$T,noise_trigger=always"
  done; done
  M="$M,synaprune-b:lr=$2,noise=0.2,noise_schedule=linear,noise_steps=1600,noise_trigger=always"
  "$SP" bench --problem "$1" --method "$M" --seeds 32 --seed-start 10000 --steps 2000 \
    --db "$OUT/$3.db" --defaults plain --batch-seeds 64
done
