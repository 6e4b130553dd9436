"""The training recipe's settings (`TrainConfig`), in a module that imports no Keras, so the
command line takes its defaults and ranges from here before a backend loads."""

from __future__ import annotations

import argparse
import dataclasses

from keras_dae import validation


@dataclasses.dataclass
class TrainConfig:
    """The recipe's settings; defaults suit ~1,000 clips on a 2-core CPU (see README)."""

    tower_epochs: int = 10
    fusion_epochs: int = 5
    # Stage 3 (front ends, towers and heads trained together). None: the command's default,
    # `JOINT_EPOCHS` for `keras-dae train` and the Trainer (`epochs`); fine-tuning has its own.
    joint_epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    fusion_learning_rate: float = 3e-3
    joint_learning_rate: float = 1e-4
    chunk_seconds: float = 1.0
    hop_seconds: float = 0.5
    mixup: float = 0.0
    # Random level: each training chunk scaled by a gain drawn uniformly within ±gain_db dB
    # (`ChunkLoader(gain_db=...)`), so that a stream does not learn the recording level of the
    # training clips' sources; 0: off. Takes no feature cache (the waveform changes).
    gain_db: float = 0.0
    balanced: bool = False
    # SpecAugment-style masking in the towers: None keeps the model's own setting, False
    # turns it off, True sets `DEFAULT_FEATURE_MASKING` (see README for what it does here).
    feature_masking: bool | None = None
    # Directory of the on-disk cache of the weight-free (handcrafted) streams' features,
    # computed once before training (None: computed in every step). See FeatureCache.
    feature_cache: str | None = None
    patience: int = 3
    # The model comes from a preset (fine-tuning, keras_dae.finetune): its feature
    # normalisation is kept, and stage 1 trains the stream heads only (front ends and towers
    # frozen); the joint stage, when it has epochs, trains everything.
    pretrained: bool = False
    # Draw the attention weights of the towers' blocks anew before training, smaller than a new
    # block's and with query, key and value tied (`TransformerEncoder.reinitialize_attention`),
    # so that the blocks start close to the identity and keep what changes over time: Keras'
    # own draw averages the frames of a clip away before any training, and pretraining leaves
    # attention that does (docs/pretraining.md, "Where time is lost"). From a pretrained
    # backbone (`diverse_pretrained`) the rest of it is kept (as Zhang et al., ICLR 2021,
    # re-initialise a pretrained Transformer's top layers for few-sample fine-tuning); from
    # random weights the towers are drawn as Keras draws them, then their attention so. None:
    # yes; False keeps the attention as it is (pretrained, or Keras' draw). `keras-dae pretrain
    # --reinit-attention` draws it so before pretraining (False there: Keras' draw).
    reinit_attention: bool | None = None
    # Training from a pretrained backbone: adapt its towers' feature normalisation on the
    # labelled training chunks, as training from random weights does, rather than keep the
    # statistics of the pretraining corpus (with the corpus's statistics, the pitch stream
    # and the fused score lose on new classes; docs/fine-tuning.md). None: yes; False keeps
    # the pretrained statistics. Other presets always adapt them.
    adapt_normalization: bool | None = None
    normalization_chunks: int = 512
    seed: int = 0
    # Scale (keras_dae.scale): None (float32) or "bfloat16" (Keras' mixed_bfloat16 policy; build
    # the model after `scale.set_mixed_precision("bfloat16")`); `compile(jit_compile=...)`
    # ("auto": XLA on TensorFlow and JAX, eager on PyTorch); data parallelism over every local
    # device (build the model and train inside `scale.data_parallel(batch_size)`).
    mixed_precision: str | None = None
    jit_compile: bool | str = "auto"
    data_parallel: bool = False
    # Pretraining only (keras_dae.pretraining): the share of each pair's views low-passed at a
    # cutoff drawn in `PAIR_MIX["lowpass_hz"]`, so that a recording's bandwidth (8 kHz
    # telephone speech, say) does not tell files apart. Supervised runs refuse it.
    lowpass: float = 0.0
    # Pretraining only: the weight of VICReg's variance and covariance terms on each view's
    # tower embeddings (`keras_dae.models.contrastive.EmbeddingSpread`; 0: none).
    spread: float = 0.0
    # Pretraining only: the width of a hidden ReLU layer in each stream's projection head
    # (`DiverseContrastive(projection_hidden=...)`; 0: COLA's single dense layer).
    projection_hidden: int = 0
    # Pretraining only: the weight of the regression, from every tower's embedding, of the
    # handcrafted streams' clip statistics (`DiverseContrastive(prediction_weight=...)`,
    # PASE's regression workers; 0: none).
    predict_features: float = 0.0
    # Pretraining only: the weight of the regression, from every tower's output frames, of the
    # handcrafted streams' features frame by frame (`DiverseContrastive(
    # frame_prediction_weight=...)`; 0: none).
    predict_frames: float = 0.0
    # Pretraining only: each tower's input frames masked in training, in `MASKED_SPANS` spans
    # per view of up to `mask_frames / 2` of its frames each (`FeatureMasking`), so that with
    # `predict_frames` the towers regress the handcrafted features of frames they do not see,
    # from their context (masked prediction: HuBERT's first iteration predicts, for masked
    # frames, the k-means classes of their MFCCs; TERA and MockingJay reconstruct the masked
    # frames). 0: none.
    mask_frames: float = 0.0

    # The range of each numeric setting (keras_dae.validation); the CLI's flags use the same.
    RANGES = {"tower_epochs": "non_negative_int", "fusion_epochs": "non_negative_int",
              "joint_epochs": "non_negative_int", "batch_size": "positive_int",
              "learning_rate": "positive_float", "fusion_learning_rate": "positive_float",
              "joint_learning_rate": "positive_float", "chunk_seconds": "positive_float",
              "hop_seconds": "positive_float", "mixup": "non_negative_float",
              "gain_db": "non_negative_float",
              "patience": "positive_int", "normalization_chunks": "positive_int",
              "seed": "non_negative_int", "lowpass": "unit_interval",
              "spread": "non_negative_float", "projection_hidden": "non_negative_int",
              "predict_features": "non_negative_float", "predict_frames": "non_negative_float",
              "mask_frames": "unit_interval"}

    def __post_init__(self):
        for name, rule in self.RANGES.items():
            if not (name == "joint_epochs" and self.joint_epochs is None):
                validation.check(f"TrainConfig.{name}", getattr(self, name), rule)
        if self.gain_db and self.feature_cache:
            raise validation.InputError(
                "--gain-db changes each chunk's waveform, so the cached features of the "
                "handcrafted streams would not match it: leave out --feature-cache")

    def epochs(self, stage: str) -> int:
        """The epochs of `stage` ("towers", "fusion" or "joint"), the default filled in."""
        return {"towers": self.tower_epochs, "fusion": self.fusion_epochs,
                "joint": JOINT_EPOCHS if self.joint_epochs is None else self.joint_epochs}[stage]


# The joint stage's epochs when `TrainConfig.joint_epochs` is None: in `keras-dae train` (and
# the Trainer), measured from the fusion stage's choice on the sampled dataset
# (benchmarks/joint_stage.py, docs/training.md; the stage keeps its start unless an epoch
# scores higher on validation); in `keras-dae finetune --mode full` (keras_dae.finetune).
JOINT_EPOCHS = 4
FULL_JOINT_EPOCHS = 5

# Pretraining's `mask_frames`: the spans of frames masked per view (`FeatureMasking`'s
# `time_masks`; each up to `mask_frames / 2` of the frames wide, so `mask_frames / 4` on
# average, and about 40% of the frames masked at `mask_frames` 0.5 once spans overlap).
MASKED_SPANS = 4

# `keras-dae train`'s flags for the numeric settings: (flag, setting, help). Their types
# (ranges) and defaults are the settings' own (`parse_type`, `default`).
FLAGS = (("--epochs", "tower_epochs", "stage 1 (tower) epochs"),
         ("--fusion-epochs", "fusion_epochs", None),
         ("--joint-epochs", "joint_epochs", "stage 3, everything trained together (default: "
          f"train {JOINT_EPOCHS}, finetune --mode full {FULL_JOINT_EPOCHS})"),
         ("--batch-size", "batch_size", None), ("--learning-rate", "learning_rate", None),
         ("--mixup", "mixup", "mixup alpha (0: off)"),
         ("--gain-db", "gain_db", "random level: each training chunk scaled by a gain drawn "
          "uniformly within +-GAIN_DB dB (0: off)"),
         ("--patience", "patience", None),
         ("--seed", "seed", None),
         ("--lowpass", "lowpass", "share of the views low-passed, cutoff drawn in 2-6 kHz"),
         ("--spread", "spread", "weight of VICReg's variance and covariance terms on the "
          "towers' embeddings (0: none)"),
         ("--projection-hidden", "projection_hidden", "width of a hidden ReLU layer in each "
          "stream's projection head (0: none, COLA's single dense layer)"),
         ("--predict-features", "predict_features", "weight of the regression of the "
          "handcrafted streams' clip statistics from every tower's embedding (0: none)"),
         ("--predict-frames", "predict_frames", "weight of the regression of the handcrafted "
          "streams' features, frame by frame, from every tower's output frames (0: none)"),
         ("--mask-frames", "mask_frames", f"mask each tower's input frames in {MASKED_SPANS} "
          "spans per view, each up to half this share of the frames (0: none); with "
          "--predict-frames, masked prediction"))


# Self-supervised pretraining (`keras-dae pretrain`, keras_dae.pretraining): one stage of
# `tower_epochs`, its own defaults, and no mixup, balancing, masking or feature cache.
PRETRAIN_DEFAULTS = {"tower_epochs": 30, "batch_size": 64, "learning_rate": 1e-3, "patience": 5}
PRETRAIN_FLAGS = ("tower_epochs", "batch_size", "learning_rate", "patience", "seed", "lowpass",
                  "spread", "projection_hidden", "predict_features", "predict_frames",
                  "mask_frames")
PRETRAIN_ONLY = ("lowpass", "spread", "projection_hidden", "predict_features",
                 "predict_frames", "mask_frames")


def add_arguments(parser, processes: bool = False, pretraining: bool = False) -> None:
    """Adds the recipe's flags (`FLAGS` and the others `from_flags` reads, with `--resume` and
    `--overwrite`) to the argparse `parser` of `keras-dae train` or `finetune`; with
    `processes`, also those of a multi-process run (`add_process_arguments`); with
    `pretraining`, those of `keras-dae pretrain` (`PRETRAIN_FLAGS`, `PRETRAIN_DEFAULTS`)."""
    if processes:
        add_process_arguments(parser)
    for flag, field, help in FLAGS:  # types (ranges), defaults: TrainConfig's
        if field in PRETRAIN_FLAGS if pretraining else field not in PRETRAIN_ONLY:
            parser.add_argument(flag, type=parse_type(field), help=help,
                                default=(PRETRAIN_DEFAULTS if pretraining else {}).get(
                                    field, default(field)))
    if not pretraining:
        _add_sampling_arguments(parser)
    else:
        parser.add_argument("--reinit-attention", action="store_true",
                            help="draw the attention weights of the towers' blocks small, with "
                                 "query, key and value tied, once built (as `train` draws a "
                                 "pretrained backbone's), rather than as Keras draws them")
    parser.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                        help="compile the train step (auto: XLA on TensorFlow and JAX, eager "
                             "on PyTorch; on: also torch.compile)")
    parser.add_argument("--data-parallel", action="store_true",
                        help="split every batch over all local devices (JAX: "
                             "keras.distribution.DataParallel; TensorFlow: MirroredStrategy); "
                             "the batch size must divide by the device count")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its checkpoint" + (
                            " (a finished one too, to more --epochs)" if pretraining else ""))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in RUN_DIR (its own files are removed first)")


def _add_sampling_arguments(parser) -> None:
    """`--balanced`, `--feature-masking`, `--feature-cache`, `--reinit-attention` and
    `--adapt-normalization` (supervised runs only)."""
    parser.add_argument("--balanced", action="store_true", help="balanced sampling")
    parser.add_argument("--reinit-attention", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="draw the attention weights of the towers' blocks anew before "
                             "training, small and with query, key and value tied (default: yes; "
                             "--no-reinit-attention keeps a pretrained backbone's, or Keras' "
                             "draw for random towers)")
    parser.add_argument("--adapt-normalization", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="adapt a pretrained backbone's feature normalisation on the "
                             "training clips (default: yes; --no-adapt-normalization keeps "
                             "the pretraining corpus's statistics)")
    parser.add_argument("--feature-masking", choices=("on", "off", "preset"), default="preset",
                        help="SpecAugment-style masking of the towers' features in training "
                             "(default: as the preset's towers say)")
    parser.add_argument("--feature-cache", nargs="?", const="run", default=None, metavar="DIR",
                        help="compute the handcrafted streams' features once and keep them in "
                             "DIR (default RUN_DIR/feature_cache)")


def from_flags(args) -> TrainConfig:
    """The `TrainConfig` of `keras-dae train`'s parsed flags (an `argparse.Namespace`):
    the `FLAGS`, `--balanced`, `--feature-masking on|off|preset`, `--feature-cache [DIR]`
    (no DIR: `<--out>/feature_cache`), `--mixed-precision`, `--data-parallel` and
    `--jit-compile auto|on|off`."""
    import os

    numeric = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in FLAGS
               if hasattr(args, flag[2:].replace("-", "_"))}  # pretrain: PRETRAIN_FLAGS only
    cache = getattr(args, "feature_cache", None)
    return TrainConfig(
        **numeric, balanced=getattr(args, "balanced", False),
        reinit_attention=getattr(args, "reinit_attention", None),
        adapt_normalization=getattr(args, "adapt_normalization", None),
        feature_masking={"on": True, "off": False, "preset": None}[
            getattr(args, "feature_masking", "preset")],
        feature_cache=os.path.join(args.out, "feature_cache") if cache == "run" else cache,
        mixed_precision=args.mixed_precision, data_parallel=args.data_parallel,
        jit_compile={"auto": "auto", "on": True, "off": False}[args.jit_compile])


@dataclasses.dataclass(frozen=True)
class Processes:
    """How this process joins a multi-process (multi-host) JAX run (`keras_dae.scale.
    initialize_multiprocess`); not part of the recipe, so not in `TrainConfig`.

    `enabled`: join one even when nothing below is set (JAX's cluster detection, e.g. SLURM,
    supplies the rest). `coordinator` ("host:port" of process 0), `num_processes` and
    `process_id`: None takes them from the environment (`KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`,
    `JAX_COORDINATOR_ADDRESS`). `timeout`: seconds the processes wait for each other (start,
    barriers); `heartbeat_timeout`: seconds after which a silent process is taken for dead.
    """

    enabled: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout: float = 300.0
    heartbeat_timeout: float = 60.0

    def __post_init__(self):
        if self.num_processes is not None:
            validation.check("Processes.num_processes", self.num_processes, "positive_int")
        if self.process_id is not None:
            validation.check("Processes.process_id", self.process_id, "non_negative_int")
        validation.check("Processes.timeout", self.timeout, "positive_float")
        validation.check("Processes.heartbeat_timeout", self.heartbeat_timeout,
                         "positive_float")


def add_process_arguments(parser) -> None:
    """Adds the flags of a multi-process run (`Processes`) to `keras-dae train`'s parser."""
    group = parser.add_argument_group(
        "several processes (JAX; see docs/multi-host.md)",
        "each process reads its part of every batch from --shards; process 0 writes the "
        "files. Unset flags come from KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID or "
        "JAX_COORDINATOR_ADDRESS; any of them turns --data-parallel on")
    group.add_argument("--multi-process", action="store_true",
                       help="join a multi-process run even with none of these set (JAX "
                            "detects SLURM, Open MPI and Kubernetes)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address and a free port on it")
    group.add_argument("--num-processes", type=validation.positive_int, metavar="N")
    group.add_argument("--process-id", type=validation.non_negative_int, metavar="I",
                       help="this process's id, 0..N-1 (0 writes the files)")
    group.add_argument("--process-timeout", type=validation.positive_float, metavar="S",
                       default=Processes.timeout,
                       help="seconds the processes wait for each other (default %(default)s)")
    group.add_argument("--heartbeat-timeout", type=validation.positive_float, metavar="S",
                       default=Processes.heartbeat_timeout,
                       help="seconds of silence after which a process is taken for dead and "
                            "the others stop (default %(default)s)")


def processes_from_flags(args) -> Processes:
    """The `Processes` of `keras-dae train`'s parsed flags (`add_process_arguments`)."""
    return Processes(enabled=args.multi_process, coordinator=args.coordinator,
                     num_processes=args.num_processes, process_id=args.process_id,
                     timeout=args.process_timeout, heartbeat_timeout=args.heartbeat_timeout)


def default(name: str):
    """The default of the setting `name`."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


def parse_type(name: str):
    """The argparse type that refuses what `TrainConfig` refuses for `name` (its `RANGES`)."""
    return getattr(validation, TrainConfig.RANGES[name])
