#!/bin/bash
# The hard-regime study of issue 9, section 4 (docs/results.md, "Where SynaPrune helps: the hard
# regime"): teacher-student at GD's step 5/k (the tuned value: scripts/tune_hard_regime.sh),
# until converged. Exact k = 8, 12, 16: evaluation seeds 0-499, 3000 steps, and k = 16 also at
# 6000; sampled (N = 2000) k = 8, 12, 16: seeds 0-199, 3000 steps. Methods: gd,
# synaprune-escape, gd-restarts R = 4 (the tuned R) and R = 2 (same total budget), and the
# over-parameterised students k+1, k+2 with gd at the teacher's 5/k (exact only).
# Parts that can run side by side (one thread each): "exact", "sampled", "others" (the other
# baselines of issue 9, section 3, at GD's step with the options of their equal-effort tuning,
# scripts/tune_hard_regime.sh: perturbed-gd radius 8, threshold 1e-3; gradient-noise eta 1e-6;
# sam rho 3e-4; saddle-free Newton at its defaults, not tuned; seeds 0-199, exact k = 8, 12, 16)
# and "presets" (the lab's other SynaPrune presets at GD's step with the knobs tuned on
# teacher-student:exact=false,k=6, docs/tuning.md, not re-tuned here: synaprune-b, the stall-
# triggered noise, on exact k = 12 and 16; synaprune-a, -b, -c on sampled k = 12, where the
# per-example mechanisms A and C apply, then A and C at their own tuned steps and the
# combinations -ab, -bc and abc (synaprune) there; seeds 0-199); "all" (the default) runs
# them in turn.
# Resumable: finished runs are skipped on reruns.
# Usage: scripts/study_hard_regime.sh [OUT] [exact|sampled|others|presets|all]
#   then: python scripts/study_hard_regime.py OUT
set -euo pipefail
OUT=${1:-out/study}
PART=${2:-all}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
COMMON=(--seed-start 0 --steps 3000 --defaults plain --threads 1 --until-converged --quiet)
methods() {  # the four methods at rate $1
  echo "gd:lr=$1,synaprune-escape:lr=$1,gd-restarts:lr=$1,restarts=4,gd-restarts:lr=$1,restarts=2"
}
run() { echo "$(date -u +%T) $*" >&2; "$SP" bench "${COMMON[@]}" "$@"; }  # later --steps wins
if [ "$PART" = exact ] || [ "$PART" = all ]; then
  E=(--seeds 500 --batch-seeds 500)
  for cell in "8 0.625" "12 0.4167" "16 0.3125"; do
    set -- $cell
    run "${E[@]}" --problem "teacher-student:k=$1" --method "$(methods "$2")" --db "$OUT/e$1.db"
    run "${E[@]}" --problem "teacher-student:k=$(($1 + 1)),n=$1" \
      --problem "teacher-student:k=$(($1 + 2)),n=$1" --method "gd:lr=$2" --db "$OUT/e$1.db"
  done
  # does the k = 16 verdict hold with twice the budget? (the preset's schedule scales with it)
  run "${E[@]}" --problem teacher-student:k=16 --method "$(methods 0.3125)" \
    --db "$OUT/e16_6000.db" --steps 6000
fi
if [ "$PART" = sampled ] || [ "$PART" = all ]; then
  S=(--seeds 200 --batch-seeds 200)
  for cell in "8 0.625" "12 0.4167" "16 0.3125"; do
    set -- $cell
    run "${S[@]}" --problem "teacher-student:k=$1,exact=false,N=2000" \
      --method "gd:lr=$2,synaprune-escape:lr=$2,gd-restarts:lr=$2,restarts=4" --db "$OUT/s$1.db"
  done
fi
if [ "$PART" = others ] || [ "$PART" = all ]; then
  O=(--seeds 200 --batch-seeds 200)
  for cell in "8 0.625" "12 0.4167" "16 0.3125"; do
    set -- $cell
    run "${O[@]}" --problem "teacher-student:k=$1" --db "$OUT/o$1.db" \
      --method "perturbed-gd:lr=$2,radius=8,threshold=0.001,gradient-noise:lr=$2,eta=0.000001,sam:lr=$2,rho=0.0003,saddle-free-newton"
  done
fi
if [ "$PART" = presets ] || [ "$PART" = all ]; then
  P=(--seeds 200 --batch-seeds 200)
  B="noise=0.1,stall_threshold=0.01"  # synaprune-b's tuned knobs (teacher-student, k = 6)
  for cell in "12 0.4167" "16 0.3125"; do
    set -- $cell
    run "${P[@]}" --problem "teacher-student:k=$1" --db "$OUT/p$1.db" \
      --method "synaprune-b:lr=$2,$B"
  done
  run "${P[@]}" --problem "teacher-student:k=12,exact=false,N=2000" --db "$OUT/p12s.db" \
    --method "synaprune-b:lr=0.4167,$B,synaprune-c:lr=0.4167,beta=0.1,synaprune-a:lr=0.4167,blend=0.25"
  # At GD's step every run of A and C diverges: their own steps, tuned on held-out seeds
  # (scripts/tune_hard_regime.sh OUT mechanisms): A at 0.5 x 5/k, C at 0.3 x 5/k.
  run "${P[@]}" --problem "teacher-student:k=12,exact=false,N=2000" --db "$OUT/p12s.db" \
    --method "synaprune-c:lr=0.125,beta=0.1,synaprune-a:lr=0.208333,blend=0.25"
  # The combinations, at the step of the mechanism that needs the smaller one (A's 0.2083 or
  # C's 0.125); abc (plain synaprune) costs about an hour of CPU for 200 seeds.
  run "${P[@]}" --problem "teacher-student:k=12,exact=false,N=2000" --db "$OUT/p12s.db" \
    --method "synaprune-bc:lr=0.125,beta=0.1,$B,synaprune-ab:lr=0.208333,blend=0.25,$B"
  run "${P[@]}" --problem "teacher-student:k=12,exact=false,N=2000" --db "$OUT/p12s.db" \
    --method "synaprune:lr=0.125,blend=0.25,beta=0.1,$B"
fi
echo "$(date -u +%T) done ($PART)" >&2
