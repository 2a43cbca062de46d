#!/bin/bash
# Equal-effort tuning on the seed author's own case, the digits autoencoder 64-32-2-32-64
# (docs/tuning.md, "Autoencoder: equal effort"): held-out seeds 10000-10031 (the study
# evaluates on 0-199), 1000 steps until converged, success = the PCA reference within 1 %.
# Stage 1 ("gd"): gd over six steps. Stage 2 ("others", STEP = gd's winner): six settings per
# method at that step, the protocol of the teacher-student tuning (scripts/tune_hard_regime.sh):
#   escape (mech. B)  sigma_0 in {0.03, 0.1, 0.2} x noise over {0.6, 0.8} of the budget
#   gd-restarts       R in {2, 4, 8} x step in {STEP, STEP / 2}
#   perturbed-gd      radius in {0.1, 0.5, 2} x threshold in {1e-3, 1e-5}
#   gradient-noise    eta in {1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 1e-1}
#   sam               rho in {0.001, 0.003, 0.01, 0.02, 0.05, 0.1}
# and the preset itself (synaprune-escape, sigma_0 = 0.2 over 80 %: the escape grid's corner).
# Saddle-free Newton is not tuned here: 20 Hessian-vector products a step make one setting cost
# about as much as all the others together (docs/tuning.md).
# One bench process, one thread; resumable. Then: python scripts/tune_hard_regime.py OUT
# Usage: scripts/tune_autoencoder.sh OUT gd | scripts/tune_autoencoder.sh OUT others|extension STEP
set -euo pipefail
OUT=${1:-out/tune_ae}
PART=${2:-gd}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
COMMON=(--problem autoencoder --seeds 32 --seed-start 10000 --steps 1000 --batch-seeds 32
        --defaults plain --threads 1 --until-converged --quiet --db "$OUT/ae.db")
if [ "$PART" = gd ]; then
  "$SP" bench "${COMMON[@]}" --method "gd:lr=1,gd:lr=1.5,gd:lr=2,gd:lr=3,gd:lr=4.5,gd:lr=6"
  exit 0
fi
L=${3:?"the step gd won at (stage 1)"}
H=$(python3 -c "print(round($L / 2, 6))")
if [ "$PART" = extension ]; then
  # The extension rule: a winner at the edge of its grid gets one more value beyond it (stage 2
  # at lr 4.5: gd-restarts won at R = 2 with step L/2, gradient-noise at eta 1e-5, escape at
  # sigma_0 0.03 over 60 %, perturbed-gd at radius 2, sam at rho 1e-3: all at an edge).
  Q=$(python3 -c "print(round($L / 4, 6))")
  M="gd-restarts:lr=$Q,restarts=2,gradient-noise:lr=$L,eta=0.000001"
  M="$M,synaprune-b:lr=$L,noise=0.01,noise_schedule=linear,noise_steps=600,noise_trigger=always"
  M="$M,perturbed-gd:lr=$L,radius=4,threshold=0.001,sam:lr=$L,rho=0.0003"
  "$SP" bench "${COMMON[@]}" --method "$M"
  # Extended again where the extension won and gained (more global runs than the winner before
  # it): perturbed-gd's radius 4 (21 against 20). sam's rho 3e-4 tied (19, gd's count).
  "$SP" bench "${COMMON[@]}" --method "perturbed-gd:lr=$L,radius=8,threshold=0.001"
  echo "$(date -u +%T) extension done" >&2
  exit 0
fi
M="synaprune-escape:lr=$L"
for s in 0.03 0.1 0.2; do for f in 600 800; do
  M="$M,synaprune-b:lr=$L,noise=$s,noise_schedule=linear,noise_steps=$f,noise_trigger=always"
done; done
for R in 2 4 8; do M="$M,gd-restarts:lr=$L,restarts=$R,gd-restarts:lr=$H,restarts=$R"; done
for r in 0.1 0.5 2; do for g in 0.001 0.00001; do
  M="$M,perturbed-gd:lr=$L,radius=$r,threshold=$g"
done; done
for e in 0.00001 0.0001 0.001 0.003 0.01 0.1; do M="$M,gradient-noise:lr=$L,eta=$e"; done
for r in 0.001 0.003 0.01 0.02 0.05 0.1; do M="$M,sam:lr=$L,rho=$r"; done
echo "$(date -u +%T) autoencoder others at lr=$L" >&2
"$SP" bench "${COMMON[@]}" --method "$M"
echo "$(date -u +%T) done" >&2
