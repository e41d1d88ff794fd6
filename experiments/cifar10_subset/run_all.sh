#!/usr/bin/env bash
# The whole study, stage by stage (each resumable: run it again after a stop), then the report.
#   bash experiments/cifar10_subset/run_all.sh [path/to/cifar10_subset.npz] [AutoAttack images] \
#       [seeds for the eps sweep and AutoAttack]
# What was run here (2 CPU cores, ~3.5 h): run_all.sh ../shared/data/cifar10_subset.npz 100
# (the sweep and AutoAttack on every seed; AutoAttack on the first 100 test images)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/cifar10_subset.npz}
AA=${2:-1017}
SEEDS=${3:-0,1,2}
python experiments/cifar10_subset/stage1_tune.py --data="$DATA"
python experiments/cifar10_subset/stage2_train.py --data="$DATA"
python experiments/cifar10_subset/stage3_evaluate.py --data="$DATA" --parts=main
python experiments/cifar10_subset/stage4_overfit.py --data="$DATA"
python experiments/cifar10_subset/stage5_landscape.py --data="$DATA"
python experiments/cifar10_subset/stage3_evaluate.py --data="$DATA" --parts=sweep,aa \
    --seeds="$SEEDS" --aa_examples="$AA"
python experiments/cifar10_subset/report.py
