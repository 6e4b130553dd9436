#!/usr/bin/env bash
# Rebuilds the `diverse_pretrained` preset (a backbone without classes) from nothing: builds
# the labelled datasets whose eval and val sources must stay out of the corpus, the
# unlabelled pretraining corpus (real audio from Debian packages; docs/pretraining-corpus.md),
# pretrains the four towers on it (`keras-dae pretrain`: COLA's contrastive objective with
# the handcrafted features' clip statistics regressed at weight 1, 1 epoch: the recipe
# measured best in docs/pretraining.md) and installs the preset where `--preset
# diverse_pretrained` and `--from diverse_pretrained` look for it
# ($KERAS_DAE_HOME/presets/diverse_pretrained, default ~/.keras-dae).
#
#   bash scripts/pretrain_preset.sh       # EPOCHS=1: about 10 min of pretraining, 2-core CPU
#   EPOCHS=40 RUN=/tmp/pretrain_run bash scripts/pretrain_preset.sh      # a GPU's budget
#
# Killed midway? Run it again: pretraining resumes from RUN's checkpoint. Run it again with a
# larger EPOCHS and a finished run trains on.
set -euo pipefail
cd "$(dirname "$0")/.."
LABELLED=${LABELLED:-/tmp/sampled_fsd50k}
NOVEL=${NOVEL:-/tmp/novel_fsd50k}
CORPUS=${CORPUS:-/tmp/pretrain_corpus}
RUN=${RUN:-/tmp/pretrain_run}
EPOCHS=${EPOCHS:-1}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}

[ -f "$LABELLED/source_inventory.csv" ] ||
    python scripts/build_sampled_dataset.py --out "$LABELLED" --seed 0
[ -f "$NOVEL/source_inventory.csv" ] ||
    python scripts/build_sampled_dataset.py --classes novel --out "$NOVEL" --seed 0
[ -f "$CORPUS/manifest.csv" ] ||
    python scripts/build_pretraining_corpus.py --out "$CORPUS" --exclude "$LABELLED" \
        --exclude "$NOVEL"
RESUME=$([ -f "$RUN/checkpoint/state.json" ] && echo --resume || true)
# A finished run asked for fewer epochs than EPOCHS trains on from where it stopped.
ASKED=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['config']['tower_epochs'])" \
    "$RUN/report.json" 2>/dev/null || echo 0)
[ "$ASKED" -ge "$EPOCHS" ] ||
    keras-dae pretrain --data "$CORPUS" --out "$RUN" --epochs "$EPOCHS" --batch-size 32 \
        --predict-features 1 --seed 0 $RESUME
HOME_DIR=${KERAS_DAE_HOME:-$HOME/.keras-dae}
mkdir -p "$HOME_DIR/presets"
rm -rf "$HOME_DIR/presets/diverse_pretrained"
cp -r "$RUN/preset" "$HOME_DIR/presets/diverse_pretrained"
echo "installed $HOME_DIR/presets/diverse_pretrained"
