#!/bin/bash
# The hard-regime study of issue 9, section 4 (docs/results.md, "Where SynaPrune helps: the hard
# regime"): teacher-student at step 5/k, evaluation seeds 0-199, 3000 steps, until converged.
# Per problem: gd, synaprune-escape, gd-restarts R = 2 and 4 (same total budget) at the same rate;
# the over-parameterised students k+1, k+2 (k = 8, 12) with gd at the teacher's 5/k.
# One bench process at a time, one thread. Resumable: finished runs are skipped on reruns.
# Usage: scripts/study_hard_regime.sh [OUT]   then: python scripts/study_hard_regime.py OUT
set -euo pipefail
OUT=${1:-out/study}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
COMMON=(--seeds 200 --seed-start 0 --steps 3000 --batch-seeds 200 --defaults plain --threads 1
        --until-converged --quiet)
methods() {  # the four methods at rate $1
  echo "gd:lr=$1,synaprune-escape:lr=$1,gd-restarts:lr=$1,restarts=2,gd-restarts:lr=$1,restarts=4"
}
run() { echo "$(date -u +%T) $*" >&2; "$SP" bench "${COMMON[@]}" "$@"; }  # later --steps wins
# exact k = 8 and its wider students
run --problem teacher-student:k=8 --method "$(methods 0.625)" --db "$OUT/e8.db"
run --problem teacher-student:k=9,n=8 --problem teacher-student:k=10,n=8 --method gd:lr=0.625 \
  --db "$OUT/e8.db"
# exact k = 12 and its wider students
run --problem teacher-student:k=12 --method "$(methods 0.4167)" --db "$OUT/e12.db"
run --problem teacher-student:k=13,n=12 --problem teacher-student:k=14,n=12 --method gd:lr=0.4167 \
  --db "$OUT/e12.db"
# exact k = 16
run --problem teacher-student:k=16 --method "$(methods 0.3125)" --db "$OUT/e16.db"
# sampled k = 8, N = 2000 (if time allows)
if [ "${SKIP_SAMPLED:-0}" != 1 ]; then
  run --problem teacher-student:k=8,exact=false,N=2000 --method "$(methods 0.625)" --db "$OUT/s8.db"
fi
# added once the cells above had run (16:04 UTC, within the time given): the width remedy at
# k = 16, and k = 16 at twice the budget (does the 3000-step verdict there hold with more steps?)
run --problem teacher-student:k=17,n=16 --problem teacher-student:k=18,n=16 --method gd:lr=0.3125 \
  --db "$OUT/e16.db"
run --problem teacher-student:k=16 --method "$(methods 0.3125)" --db "$OUT/e16_6000.db" --steps 6000 \
  --seeds 100  # seeds 0-99 only: the time left
echo "$(date -u +%T) done" >&2
