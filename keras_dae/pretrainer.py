"""The recipe's `Trainer` for self-supervised pretraining (`keras_dae.pretraining`)."""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_dae import scale
from keras_dae.data.pair_loader import PairLoader, pair_loader
from keras_dae.data.shards import ShardSet
from keras_dae.metrics import effective_rank, temporal_share
from keras_dae.train_config import MASKED_SPANS, TrainConfig
from keras_dae.training import Trainer
from keras_dae.validation import InputError

__all__ = ["Pretrainer", "frame_masking"]


def frame_masking(share: float) -> dict:
    """`FeatureMasking`'s arguments for pretraining's `mask_frames` `share`: `MASKED_SPANS`
    spans of frames per view, each up to `share / 2` of the frames; no feature channels."""
    return {"time_masks": MASKED_SPANS, "time_mask_fraction": share / 2, "feature_masks": 0}


class Pretrainer(Trainer):
    """`Trainer` for a `DiverseContrastive` on unlabelled audio: one stage, `"pretrain"`,
    of `config.tower_epochs` epochs; the recipe's checkpoints, resume and skipping as is.

    `train` and `val` are `ClipDataset`s (audio files) or `ShardClips` (clips of shards; what
    a run of several processes reads, each process feeding its rows of every batch)."""

    STAGES = ("pretrain",)

    def __init__(self, model, train, val, run_dir, config: TrainConfig | None = None,
                 verbose: int = 1):
        if isinstance(train, ShardSet) or isinstance(val, ShardSet):
            raise InputError("pretraining draws its pairs from clips: pass ShardClips(shards)")
        super().__init__(model, train, val, run_dir, config, verbose)
        self.val_loader = None
        self._framer = None  # waveform -> each tower's output frames (embedding_statistics)

    def _run(self, resume: bool) -> dict:
        """The run, with the towers' input frames masked in training when `config.mask_frames`
        asks for it; their own masking (the architecture's) is put back afterwards, so the
        backbone saved after the run is the architecture's."""
        if not self.config.mask_frames:
            return super()._run(resume)
        towers = self.model.backbone.towers.values()
        kept = [tower.feature_masking for tower in towers]
        for tower in towers:
            tower.set_feature_masking(frame_masking(self.config.mask_frames))
        try:
            return super()._run(resume)
        finally:
            for tower, masking in zip(towers, kept, strict=True):
                tower.set_feature_masking(masking)

    def _epochs(self, stage: str) -> int:
        return self.config.tower_epochs

    def _pairs(self, data, whole_batches: bool = False, **kwargs) -> PairLoader:
        """The pairs of `data` with the recipe's chunking and batch; in a run of several
        processes, this process's rows of every batch (`whole_batches`: all of them)."""
        c = self.config
        processes = 1 if whole_batches else scale.process_count()
        return pair_loader(data, self.model.stream_names, sample_rate=self.model.sample_rate,
                           batch_size=c.batch_size, chunk_seconds=c.chunk_seconds,
                           hop_seconds=c.hop_seconds, skipped=self.skipped,
                           process_count=processes,
                           process_index=scale.process_index() if processes > 1 else 0,
                           mix={"lowpass_probability": c.lowpass}, **kwargs)

    def _loader(self, shuffle=True, mixup=None, balanced=None, whole_batches=False,
                gain_db=None):
        loader = self._pairs(self.train, whole_batches, shuffle=shuffle, seed=self.config.seed)
        self._count_audio("train", loader)
        return loader

    def _count_audio(self, split: str, loader: PairLoader) -> None:
        """Keeps the seconds of readable audio the loader probed in the run's state (the
        report's cost; a resumed run that has nothing left to train builds no loader)."""
        self.state.setdefault("audio_seconds", {})[split] = loader.audio_seconds

    def _adapt_normalization(self) -> dict:
        """The towers' normalisation, then, with feature prediction on, its targets' (the same
        training chunks' clip statistics, or their features frame by frame)."""
        features = super()._adapt_normalization()
        handcrafted = [features[s] for s in self.model.featurizer.fixed_streams()]
        for targets in (self.model.clip_statistics, self.model.frame_features):
            if targets is not None:
                targets.adapt(handcrafted)
        return features

    def _compile(self, stage: str) -> None:
        self._epoch_started = time.time()
        streams = self.model.stream_names
        self.model.compile(
            optimizer=keras.optimizers.Adam(self.config.learning_rate),
            loss={s: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                  for s in streams},
            metrics={s: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
                     for s in streams},
            jit_compile=self.config.jit_compile)

    def _end_of_epoch(self, stage, epoch, logs) -> None:
        # Training time, summed over the epochs (a resumed run counts each epoch once).
        now = time.time()
        self.state["train_seconds"] = self.state.get("train_seconds", 0.0) + (
            now - self._epoch_started)
        self._epoch_started = now
        super()._end_of_epoch(stage, epoch, logs)

    def _validate(self, stage: str) -> tuple[float, dict, str]:
        """The held-out files' pairs (the same every epoch: no augmentation, epoch 0): each
        stream's loss and accuracy (the share of anchors whose positive scores highest), and
        the terms the model adds to them (spread, feature prediction); the score is minus the
        mean loss of the streams."""
        logs = self.model.evaluate(self._val_pairs(), verbose=0, return_dict=True)
        streams = self.model.stream_names
        loss = {s: float(logs[f"{s}_loss"]) for s in streams}
        accuracy = {s: float(logs[f"{s}_accuracy"]) for s in streams}
        added = float(logs["loss"]) - sum(loss.values())
        rank, temporal = self.embedding_statistics()
        mean_loss = float(np.mean(list(loss.values())))
        line = "val loss " + " ".join(f"{s}={loss[s]:.3f}" for s in streams) + "  accuracy " \
            + " ".join(f"{s}={accuracy[s]:.3f}" for s in streams) + "  rank " \
            + " ".join(f"{s}={rank[s]:.1f}" for s in streams) + "  over time " \
            + " ".join(f"{s}={temporal[s]:.3f}" for s in streams) + f"  added terms {added:.3f}"
        return -mean_loss, {"val_loss": mean_loss, "val_stream_loss": loss,
                            "val_accuracy": accuracy, "val_rank": rank,
                            "val_temporal_share": temporal, "val_added_loss": added}, line

    def _val_pairs(self) -> PairLoader:
        """The held-out files' pairs: not augmented, the same every epoch."""
        if self.val_loader is None:
            self.val_loader = self._pairs(self.val, augment=False, shuffle=True,
                                          seed=self.config.seed + 1)
            self._count_audio("val", self.val_loader)
        self.val_loader.set_epoch(0)
        return self.val_loader

    def embedding_statistics(self) -> tuple[dict[str, float], dict[str, float]]:
        """Each tower's effective rank (`metrics.effective_rank`) over the held-out anchors'
        embeddings (how many directions the embedding uses; a collapsing one falls) and the
        share of its output frames' variance that lies along time (`metrics.temporal_share`;
        a tower that has averaged time away has none). Any model with the towers' `featurizer`
        and `backbone` (a classifier too) can be given. In a run of several processes, over
        this process's rows of the held-out batches."""
        if self._framer is None:
            waveform = keras.Input(shape=(None,))
            features = self.model.featurizer(waveform)
            self._framer = keras.Model(waveform, {
                s: tower(features[s], return_sequence=True)
                for s, tower in self.model.backbone.towers.items()})
        rows, pairs = {s: [] for s in self.model.stream_names}, self._val_pairs()
        for index in range(len(pairs)):
            frames = self._framer.predict_on_batch(pairs[index][0]["anchor"])
            for s in rows:
                rows[s].append(keras.ops.convert_to_numpy(frames[s]))
        frames = {s: np.concatenate(r) for s, r in rows.items()}
        return ({s: effective_rank(x.mean(axis=1)) for s, x in frames.items()},
                {s: temporal_share(x) for s, x in frames.items()})
