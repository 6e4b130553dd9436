#!/usr/bin/env bash
# Trains the `diverse_sampled15` preset that ships inside the package, from nothing:
# builds the sampled FSD50K-layout dataset (real recordings and sampled instruments from
# Debian packages; see scripts/README.md), trains the paper's architecture on it with the
# project's recipe, and copies the resulting preset into keras_dae/zoo/shipped/.
#
#   bash scripts/train_shipped_preset.sh            # ~12 min on a 2-core CPU when idle
#   DATA=/tmp/sampled_fsd50k RUN=/tmp/shipped_run bash scripts/train_shipped_preset.sh
#
# Killed midway? Run it again: training resumes from RUN's checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/tmp/sampled_fsd50k}
RUN=${RUN:-/tmp/diverse_sampled15_run}
export KERAS_BACKEND=${KERAS_BACKEND:-tensorflow}

if [ ! -f "$DATA/FSD50K.ground_truth/vocabulary.csv" ]; then
    python scripts/build_sampled_dataset.py --out "$DATA" --seed 0
fi
keras-dae train --data "$DATA" --out "$RUN" --preset diverse_fsd50k \
    --epochs 8 --fusion-epochs 4 --joint-epochs 0 --batch-size 32 --seed 0 --resume
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path

from keras_dae import zoo

run = Path(sys.argv[1])
source = run / "preset"
meta = json.loads((source / "metadata.json").read_text())
model = zoo.load(str(source))
keep = ("backend", "metrics", "train_config")
target = zoo.save(model, "keras_dae/zoo/shipped/diverse_sampled15", metadata={
    **{k: meta[k] for k in keep if k in meta},
    "name": "diverse_sampled15",
    "training_data": ("scripts/build_sampled_dataset.py --seed 0 (1,500 clips: 1,000 train, "
                      "200 val, 300 eval; 15 classes)"),
    "labels_source": "scripts/build_sampled_dataset.py (FSD50K.ground_truth/vocabulary.csv)",
    "train_command": "bash scripts/train_shipped_preset.sh",
})
print(f"wrote {target}:", {k: round(v["mAP"], 3) for k, v in meta["metrics"].items()})
PY
