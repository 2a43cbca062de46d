#!/usr/bin/env bash
# Every registered method on five problems at the options tuned per problem (docs/results.md,
# "Every method on five problems"; tuning in docs/tuning.md, on seeds 1000 and up).
# Run from the repository root after `make test` (or any install of .venv):
#   bash scripts/all_methods.sh
# Seeds 0.. (never used for tuning); the budgets are the tuning budgets. Resumable: rerunning
# skips finished runs. One bench process at a time, one thread.
set -euo pipefail
DB=${DB:-out/all_methods_tuned.db}
BIN=.venv/bin/synaprune
ALL=gd,momentum,adam,perturbed-gd,gradient-noise,sam,saddle-free-newton
ALL=$ALL,synaprune-a,synaprune-b,synaprune-c,synaprune-ab,synaprune-ac,synaprune-bc,synaprune
# xor: sgd is refused (its batch of 32 exceeds the 4 examples)
$BIN bench --problem xor --method $ALL --seeds 64 --steps 2000 --db $DB --quiet
$BIN bench --problem gaussians --method sgd,$ALL --seeds 64 --steps 2000 --db $DB --quiet
$BIN bench --problem spirals --method sgd,$ALL --seeds 64 --steps 2000 --db $DB --quiet
$BIN bench --problem teacher-student:exact=false,k=6 --method sgd,$ALL --seeds 64 --steps 1000 \
  --db $DB --quiet
# autoencoder: ~40x the cost per step of the others, so 16 seeds and 300 steps
$BIN bench --problem autoencoder --method sgd,$ALL --seeds 16 --steps 300 --db $DB --quiet
$BIN results --db $DB --plot docs/all_methods.png
