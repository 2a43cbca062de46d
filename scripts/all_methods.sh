#!/usr/bin/env bash
# Every registered method on five problems (docs/results.md, "Every method on five problems").
# Run from the repository root. One bench process at a time, one thread.
# Methods refused by the CLI on a problem are left out of that problem's list (see docs).
set -euo pipefail
DB=out/all_methods.db
ALL=gd,momentum,adam,perturbed-gd,gradient-noise,sam,synaprune-a,synaprune-b,synaprune-ab
SEQ=synaprune-c,synaprune-ac,synaprune-bc,synaprune   # need an nn.Sequential model
# xor (2-2-1 sigmoid, 4 examples): sgd refused (batch_size=32 > 4 examples)
.venv/bin/synaprune bench --problem xor --method $ALL,$SEQ \
  --seeds 32 --steps 1000 --threads 1 --db $DB --quiet
.venv/bin/synaprune results --db $DB --problem xor
# teacher-student, empirical loss: the C methods refused (TwoLayerReLU is not nn.Sequential)
.venv/bin/synaprune bench --problem teacher-student:exact=false,k=6 --method sgd,$ALL \
  --seeds 32 --steps 500 --threads 1 --db $DB --quiet
.venv/bin/synaprune results --db $DB --problem teacher-student
# gaussians: the C methods refused (SumOfGaussians is not nn.Sequential)
.venv/bin/synaprune bench --problem gaussians --method sgd,$ALL \
  --seeds 32 --steps 500 --threads 1 --db $DB --quiet
.venv/bin/synaprune results --db $DB --problem gaussians
# spirals: every method accepted
.venv/bin/synaprune bench --problem spirals --method sgd,$ALL,$SEQ \
  --seeds 32 --steps 500 --threads 1 --db $DB --quiet
.venv/bin/synaprune results --db $DB --problem spirals
# autoencoder: every method accepted, but the A variants (synaprune-a, -ab, -ac, synaprune) cost
# ~16 s per run per 200 steps here and did not fit the time limit; they are not run.
.venv/bin/synaprune bench --problem autoencoder \
  --method adam,gd,sgd,momentum,synaprune-c,synaprune-b,synaprune-bc,perturbed-gd,gradient-noise,sam \
  --seeds 32 --steps 200 --threads 1 --db $DB --quiet
.venv/bin/synaprune results --db $DB --problem autoencoder
