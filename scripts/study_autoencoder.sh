#!/bin/bash
# The hard-regime study on the seed author's own case (docs/results.md, "The autoencoder"):
# the digits autoencoder 64-32-2-32-64, seeds 0-199 (the tuning used 10000-10031), 1000 steps
# until converged, every method at the options of its equal-effort tuning
# (scripts/tune_autoencoder.sh; docs/tuning.md, "Autoencoder: equal effort"): gd at lr 4.5;
# the escape preset as it is (sigma_0 0.2 over 80 %: a preset cannot know the problem) and
# mechanism B's tuned schedule (sigma_0 0.03 over 60 %) with its isotropic ablation;
# gd-restarts R = 2 at lr 2.25; perturbed-gd radius 4 (RADIUS); gradient-noise eta 1e-5; sam rho 3e-4.
# Resumable. Usage: scripts/study_autoencoder.sh [OUT] [RADIUS]   then: synaprune results --db
set -euo pipefail
OUT=${1:-out/study_ae}
R=${2:-4}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SP=${SYNAPRUNE:-.venv/bin/synaprune}
B="noise=0.03,noise_schedule=linear,noise_steps=600,noise_trigger=always"
M="gd:lr=4.5,synaprune-escape:lr=4.5,synaprune-b:lr=4.5,$B"
M="$M,synaprune-b:lr=4.5,$B,noise_shape=isotropic,gd-restarts:lr=2.25,restarts=2"
M="$M,perturbed-gd:lr=4.5,radius=$R,threshold=0.001,gradient-noise:lr=4.5,eta=0.00001"
M="$M,sam:lr=4.5,rho=0.0003"
echo "$(date -u +%T) autoencoder study" >&2
"$SP" bench --problem autoencoder --seeds 200 --seed-start 0 --steps 1000 --batch-seeds 200 \
  --defaults plain --threads 1 --until-converged --quiet --db "$OUT/ae.db" --method "$M"
echo "$(date -u +%T) done" >&2
