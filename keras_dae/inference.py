"""Tagging and embedding audio with a trained model: files or arrays in, labels and vectors out.

    from keras_dae.inference import Tagger

    tagger = Tagger("diverse_sampled15")               # a preset name, preset or run directory
    result = tagger.tag("dog.wav", top_k=3, timestamps=True)
    result.labels          # (LabelScore("Animal", "/m/0jbk", 0.91), ...), best first
    result.per_second      # one Segment per second: start, end, its own top labels
    result.embedding       # (256,) the four stream embeddings, concatenated
    tagger.tag(waveform, sample_rate=44100)              # a numpy array works the same way

A clip is cut into 1 s chunks every 0.5 s (`keras_dae.data.chunking`, the protocol the model
was trained and evaluated with: shorter clips are tiled, the last chunk is aligned to the
clip's end), every chunk is scored, and the clip's score is the mean of its chunks' scores
(or their maximum), as in evaluation. Reading, chunking, batching and pooling are
`keras_dae.clip_pipeline`'s, the path every keras-dae function that scores clips takes: a file
longer than 256 chunks is decoded in blocks, and `tag_many` packs the chunks of several short
files into one batch.

A `Tagger` holds no per-call state: its model function is pure (variables in, outputs out),
so several threads may share one `Tagger` and get the results one thread would get.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from keras_dae.clip_pipeline import ClipPipeline, ScoredClip
from keras_dae.messages import printable
from keras_dae.validation import InputError

# keras_dae.audio (librosa) and keras_dae.metrics (scipy) are imported where they are used, so
# that `keras-dae --help` does not wait for them.

__all__ = [
    "DEFAULT_MODEL",
    "DISAGREEMENT",
    "Explanation",
    "LabelScore",
    "Segment",
    "TagFailure",
    "TagResult",
    "Tagger",
    "embed",
    "expand_inputs",
    "load_model",
    "save_embeddings",
    "tag",
]

DEFAULT_MODEL = "diverse_sampled15"
"""The shipped preset: `predict`, `embed`, `demo` and `keras_dae.hear` use it by default."""

_SMALL_BATCH = 8  # batches of up to this many chunks are padded to it, larger ones to batch_size


@dataclasses.dataclass(frozen=True)
class LabelScore:
    """One class and its score (a sigmoid probability in [0, 1])."""

    label: str
    mid: str
    score: float

    def to_dict(self) -> dict:
        return {"label": self.label, "mid": self.mid, "score": round(self.score, 4)}


@dataclasses.dataclass(frozen=True)
class Segment:
    """The labels of `[start, end)` seconds of a clip (one second; the last may be shorter)."""

    start: float
    end: float
    labels: tuple[LabelScore, ...]

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3),
                "labels": [label.to_dict() for label in self.labels]}


DISAGREEMENT = 0.5
"""The streams disagree on a label when their own heads' clip scores for it differ by at least
this much: one stream is sure of it, another is not."""


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Which stream spoke for a label: the fused logit split exactly over the streams.

    The fusion head is linear on the concatenated stream embeddings, so a chunk's fused logit
    is `bias + sum over streams s of W_s . e_s`, and its mean over the clip's chunks is
    `bias + sum_s W_s . mean(e_s)`: one term per stream, computed from the clip's embedding.

    Attributes:
        label, mid: the class.
        score: the fused clip score (the mean of the chunks' sigmoid scores).
        logit: the mean of the chunks' fused logits, `bias + sum(contributions.values())`.
        bias: the fusion head's bias for the label.
        contributions: stream -> its term of `logit` (positive: it speaks for the label).
        shares: stream -> its contribution over the sum of their magnitudes (signed; the
            magnitudes add up to 1).
        stream_scores: stream -> that stream's own head's clip score for the label.
        disagree: the stream heads' scores differ by at least `DISAGREEMENT`.
    """

    label: str
    mid: str
    score: float
    logit: float
    bias: float
    contributions: dict[str, float]
    shares: dict[str, float]
    stream_scores: dict[str, float]
    disagree: bool

    def to_dict(self) -> dict:
        def rounded(values):
            return {name: round(value, 4) for name, value in values.items()}

        return {"label": self.label, "mid": self.mid, "score": round(self.score, 4),
                "logit": round(self.logit, 4), "bias": round(self.bias, 4),
                "contributions": rounded(self.contributions), "shares": rounded(self.shares),
                "stream_scores": rounded(self.stream_scores), "disagree": self.disagree}

    def to_text(self) -> str:
        """`Speech 0.93  timbre +45% pitch +30% ...  (streams alone: timbre 0.91, ...)`."""
        order = sorted(self.shares, key=lambda name: -abs(self.shares[name]))
        shares = " ".join(f"{name} {100 * self.shares[name]:+.0f}%" for name in order)
        alone = ", ".join(f"{name} {self.stream_scores[name]:.2f}" for name in order)
        flag = "  streams disagree" if self.disagree else ""
        return (f"{display_label(self.label)} {self.score:.2f}  {shares}  "
                f"(streams alone: {alone}){flag}")


@dataclasses.dataclass(frozen=True, eq=False)
class TagResult:
    """What the model says about one clip.

    Attributes:
        source: the file's path, or `"<array>"`.
        duration: seconds.
        labels: the `top_k` classes by fused clip score, best first.
        scores: output name (`"fused"` and each stream) -> `(num_classes,)` clip scores, the
            mean of the chunks' scores.
        embedding: `(n_streams * 64,)` float32, the mean over chunks of the model's
            `"embedding"` output (the stream embeddings, concatenated in `stream_names` order;
            the fusion head's input).
        stream_names: the streams, in the embedding's order.
        per_second: with `timestamps=True`, one `Segment` per second of audio (the last one
            may be shorter), each scored by the chunk centred nearest to it; else empty.
        chunk_starts: `(n_chunks,)` start of every chunk in seconds.
        chunk_times: `(n_chunks,)` centre of every chunk in seconds (a clip shorter than a
            chunk: its own centre), the times its scores stand for.
        chunk_scores: output name -> `(n_chunks, num_classes)` chunk scores.
        chunk_embeddings: `(n_chunks, n_streams * 64)` float32.
        explanations: with `explain=True`, an `Explanation` per label of `labels`; else
            empty.
        events: with `events=EventOptions(...)`, the clip's `keras_dae.events.Event`s in
            time; else empty.
    """

    source: str
    duration: float
    labels: tuple[LabelScore, ...]
    scores: dict[str, np.ndarray]
    embedding: np.ndarray
    stream_names: tuple[str, ...]
    per_second: tuple[Segment, ...]
    chunk_starts: np.ndarray
    chunk_times: np.ndarray
    chunk_scores: dict[str, np.ndarray]
    chunk_embeddings: np.ndarray
    explanations: tuple[Explanation, ...] = ()
    events: tuple = ()

    def __repr__(self) -> str:
        labels = ", ".join(f"{printable(x.label)} {x.score:.2f}" for x in self.labels)
        return (f"TagResult({self.source!r}, {self.duration:.2f} s, [{labels}], "
                f"{len(self.chunk_starts)} chunks, {len(self.per_second)} per-second segments)")

    @property
    def stream_embeddings(self) -> dict[str, np.ndarray]:
        """Stream name -> its own `(64,)` embedding (a slice of `embedding`)."""
        size = self.embedding.shape[-1] // len(self.stream_names)
        return {name: self.embedding[i * size:(i + 1) * size]
                for i, name in enumerate(self.stream_names)}

    def to_text(self) -> str:
        """Readable lines: the clip's labels, then one line per second when computed."""
        lines = [f"{self.source}  ({self.duration:.2f} s)  {format_labels(self.labels)}"]
        for segment in self.per_second:
            span = f"{segment.start:.1f}-{segment.end:.1f} s"
            lines.append(f"  {span:>12}  {format_labels(segment.labels)}")
        lines += [f"  {explanation.to_text()}" for explanation in self.explanations]
        lines += [f"  {event_text(e)}" for e in self.events]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: `path`, `duration`, `labels` and, when computed, `per_second`,
        `explanations` and `events`."""
        out = {"path": self.source, "duration": round(self.duration, 3),
               "labels": [label.to_dict() for label in self.labels]}
        if self.per_second:
            out["per_second"] = [segment.to_dict() for segment in self.per_second]
        if self.explanations:
            out["explanations"] = [explanation.to_dict() for explanation in self.explanations]
        if self.events:
            out["events"] = [event.to_dict() for event in self.events]
        return out


def display_label(label: str) -> str:
    """A class name for people: `"Wind_instrument_and_woodwind_instrument"` ->
    `"Wind instrument"` (underscores to spaces; AudioSet's "X and Y" names keep X), made
    `printable`: every label shown goes through here."""
    return printable(label.split("_and_")[0].replace("_", " "))


def event_text(event) -> str:
    """A `keras_dae.events.Event` for people: `    0.00-1.75 s  event Drum kit 1.00`."""
    span = f"{event.onset:.2f}-{event.offset:.2f} s"
    return f"{span:>12}  event {display_label(event.label)} {event.score:.2f}"


def format_labels(labels) -> str:
    """`"Speech 0.93, Animal 0.12"`."""
    return ", ".join(f"{display_label(x.label)} {x.score:.2f}" for x in labels)


@dataclasses.dataclass(frozen=True)
class TagFailure:
    """A clip of a batch that could not be tagged, and why (one line, naming the file)."""

    source: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.source, "error": self.reason}


def expand_inputs(arguments) -> tuple[list[str], list[TagFailure]]:
    """The files named and the audio files under the directories named (recursively, sorted,
    by extension, hidden files left out), in order; and a `TagFailure` for each name that is
    neither an existing file nor a directory with audio in it."""
    from keras_dae.audio import AudioDecodeError, audio_info
    from keras_dae.data import AUDIO_EXTENSIONS, find_audio_files

    paths, failures = [], []
    for argument in arguments:
        argument = str(argument)
        path = Path(argument)
        if path.is_dir():
            found = [str(p) for p in find_audio_files(path)]
            if not found:
                failures.append(TagFailure(argument, f"{argument}: no audio files in this "
                                           f"directory ({', '.join(AUDIO_EXTENSIONS)})"))
            paths.extend(found)
        elif path.exists():
            paths.append(argument)
        else:  # missing, or a broken link: the decoder's own refusal says which
            try:
                audio_info(argument)
                paths.append(argument)
            except AudioDecodeError as error:
                failures.append(TagFailure(argument, str(error)))
    return paths, failures


def save_embeddings(path, results, failures, stream_names, model: str,
                    sample_rate: int) -> np.ndarray:
    """Writes the clip embeddings of `results` (`TagResult`s) to the `.npz` file `path`,
    atomically, and returns the `(n, n_streams * d)` fused embeddings. The arrays: `paths`,
    `durations` (s), `fused`, one `(n, d)` array per stream (the parts of `fused`),
    `stream_names`, `skipped_paths` and `skipped_reasons` (of `failures`, `TagFailure`s),
    `model` and `sample_rate`."""
    from keras_dae import atomic

    if not results:
        raise InputError(f"nothing written to {path}: no clip to save")
    fused = np.stack([result.embedding for result in results]).astype(np.float32)
    size = fused.shape[1] // len(stream_names)
    arrays = {
        "paths": np.array([result.source for result in results]),
        "durations": np.array([result.duration for result in results], np.float32),
        "fused": fused,
        **{name: fused[:, i * size:(i + 1) * size] for i, name in enumerate(stream_names)},
        "stream_names": np.array(stream_names),
        "skipped_paths": np.array([f.source for f in failures], dtype=str),
        "skipped_reasons": np.array([f.reason for f in failures], dtype=str),
        "model": np.array(str(model)), "sample_rate": np.array(sample_rate),
    }
    atomic.atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return fused


def load_model(model=DEFAULT_MODEL, mixed_precision: str | None = None):
    """A `DiverseClassifier` from a preset name, a preset directory or a training run
    directory (its `preset/`); a model passes through unchanged. `mixed_precision`
    ("bfloat16") gives a copy that computes in it (`scale.with_precision`)."""
    from keras_dae import zoo
    from keras_dae.models.classifier import DiverseClassifier

    if not isinstance(model, DiverseClassifier):
        model = zoo.load(model)
    if mixed_precision:
        from keras_dae import scale

        model = scale.with_precision(model, mixed_precision)
    return model


def _forward_function(model):
    """A pure function `(batch, samples) float32 numpy -> {output: numpy}` for the backend.

    It reads the model's variables and writes nothing, so threads can share it: JAX runs
    `stateless_call` under `jax.jit`, TensorFlow a `tf.function` (with relaxed shapes, so
    it traces at most twice), PyTorch the model under `torch.no_grad()` (which is per
    thread).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def run(trainable, non_trainable, x):
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return outputs

        def forward(x):
            outputs = run([v.value for v in model.trainable_variables],
                          [v.value for v in model.non_trainable_variables], x)
            return {name: np.asarray(value) for name, value in outputs.items()}

        return forward
    if backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

        def forward(x):
            return {name: value.numpy() for name, value in run(tf.constant(x)).items()}

        return forward
    if backend == "torch":
        import torch

        def forward(x):
            with torch.no_grad():
                outputs = model(keras.ops.convert_to_tensor(x), training=False)
            return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}

        return forward
    raise RuntimeError(f"keras backend {backend!r} is not supported")


class Tagger:
    """Tags and embeds clips with one loaded model.

    Args:
        model: a preset name (default: the shipped `diverse_sampled15`), a preset
            directory, a training run directory, or a `DiverseClassifier`.
        batch_size: chunks per model call. A smaller batch is padded with silence to 8
            chunks (or `batch_size`), so that compiled backends (JAX's `jit` costs seconds
            per shape) compile two shapes, not one per clip length.
        chunk_seconds, hop_seconds: the chunking (the model's training protocol: 1 s, 0.5 s).
        aggregate: how chunk scores make a clip score: `"mean"` (as in evaluation) or `"max"`.
    """

    def __init__(self, model=DEFAULT_MODEL, batch_size: int = 32, chunk_seconds: float = 1.0,
                 hop_seconds: float = 0.5, aggregate: str = "mean"):
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
        if aggregate not in ("mean", "max"):
            raise InputError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
        self.model = load_model(model)
        self.batch_size = int(batch_size)
        self.chunk_seconds = float(chunk_seconds)
        self.hop_seconds = float(hop_seconds)
        self.aggregate = aggregate
        self.sample_rate = int(self.model.sample_rate)
        self.chunk_samples = int(round(self.chunk_seconds * self.sample_rate))
        self.class_names = tuple(self.model.class_names)
        self.class_mids = tuple(self.model.class_mids)
        self.stream_names = tuple(self.model.stream_names)
        self.outputs = ("fused", *self.stream_names)
        self.embedding_size = int(self.model.output["embedding"].shape[-1])
        self._pipeline = ClipPipeline(
            _forward_function(self.model), self.sample_rate, self.chunk_seconds,
            self.hop_seconds, self.batch_size, small_batch=_SMALL_BATCH, keep_chunks=True)

    # -- the model on chunks ---------------------------------------------------------------
    def forward(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs for `(n, chunk_samples)` chunks, in batches of at most `batch_size`.

        Returns `{output: (n, ...)}`: `"fused"` and each stream `(n, num_classes)`,
        `"embedding"` `(n, embedding_size)`.
        """
        outputs = self._pipeline.score_rows(chunks)
        if outputs is None:
            return {name: np.zeros((0, self.model.num_classes), np.float32)
                    for name in self.outputs} | {
                        "embedding": np.zeros((0, self.embedding_size), np.float32)}
        return {name: value.astype(np.float32, copy=False) for name, value in outputs.items()}

    # -- clips -----------------------------------------------------------------------------
    def _scored_clips(self, items: Iterable, sample_rate) -> Iterator[ScoredClip]:
        """Every item as a `ScoredClip` with all its chunk outputs, in input order
        (`keras_dae.clip_pipeline`)."""
        return self._pipeline.run(items, input_rate=sample_rate)

    def _result(self, clip: ScoredClip, top_k: int, timestamps: bool,
                explain: bool = False, events=None) -> TagResult:
        chunk = clip.chunks
        scores = {name: clip.pooled(name, self.aggregate) for name in self.outputs}
        labels = self._top(scores["fused"], top_k)
        per_second = ()
        if timestamps:
            per_second = self._per_second(clip, chunk["fused"], top_k)
        explanations = ()
        if explain:
            explanations = self._explain(labels, scores, clip.pooled("embedding"))
        times = clip.chunk_times()
        found = ()
        if events is not None:
            from keras_dae.events import detect_events

            found = tuple(detect_events(times, chunk["fused"], self.class_names,
                                        clip.n_samples / self.sample_rate, events))
        return TagResult(
            source=clip.source, duration=clip.n_samples / self.sample_rate, labels=labels,
            scores=scores, embedding=clip.pooled("embedding").astype(np.float32),
            stream_names=self.stream_names, per_second=per_second,
            chunk_starts=clip.chunk_starts() / self.sample_rate, chunk_times=times,
            chunk_scores={name: chunk[name] for name in self.outputs},
            chunk_embeddings=chunk["embedding"], explanations=explanations, events=found,
        )

    def _fusion(self) -> tuple[np.ndarray, np.ndarray]:
        """The fusion head's kernel `(n_streams * d, num_classes)` and bias, float64 (read
        on each call: the model may have been trained since the `Tagger` was made)."""
        from keras import ops

        head = self.model.fusion_head
        return (ops.convert_to_numpy(head.kernel).astype(np.float64),
                ops.convert_to_numpy(head.bias).astype(np.float64))

    def _explain(self, labels, scores: dict, embedding: np.ndarray) -> tuple[Explanation, ...]:
        kernel, bias = self._fusion()
        size = len(embedding) // len(self.stream_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        explanations = []
        for label in labels:
            k = index[label.label]
            contributions = {
                name: float(embedding[i * size:(i + 1) * size] @ kernel[i * size:(i + 1) * size, k])
                for i, name in enumerate(self.stream_names)}
            total = sum(abs(value) for value in contributions.values()) or 1.0
            alone = {name: float(scores[name][k]) for name in self.stream_names}
            explanations.append(Explanation(
                label=label.label, mid=label.mid, score=label.score,
                logit=float(bias[k]) + sum(contributions.values()), bias=float(bias[k]),
                contributions=contributions,
                shares={name: value / total for name, value in contributions.items()},
                stream_scores=alone,
                disagree=max(alone.values()) - min(alone.values()) >= DISAGREEMENT))
        return tuple(explanations)

    def _per_second(self, clip: ScoredClip, fused: np.ndarray, top_k: int) -> tuple[Segment, ...]:
        """One segment per second, scored by the chunk whose centre is nearest its centre
        (with 1 s chunks every 0.5 s: exactly the chunk over that second; a last, partial
        second gets the end-aligned chunk). A remainder under 0.25 s joins the second before
        it, so no segment is a sliver."""
        sr = self.sample_rate
        duration = clip.n_samples / sr
        whole, remainder = divmod(clip.n_samples, sr)
        edges = [float(s) for s in range(whole + 1)]
        if remainder and whole >= 1 and remainder < sr / 4:
            edges[-1] = duration
        elif remainder:
            edges.append(duration)
        centres = clip.chunk_times()
        segments = []
        for start, end in zip(edges[:-1], edges[1:], strict=True):
            nearest = int(np.argmin(np.abs(centres - (start + end) / 2)))
            segments.append(Segment(start, end, self._top(fused[nearest], top_k)))
        return tuple(segments)

    def _top(self, scores: np.ndarray, top_k: int) -> tuple[LabelScore, ...]:
        order = np.argsort(-np.asarray(scores), kind="stable")[:max(0, int(top_k))]
        return tuple(LabelScore(self.class_names[i], self.class_mids[i], float(scores[i]))
                     for i in order)

    # -- public ----------------------------------------------------------------------------
    def tag_many(self, items: Iterable, sample_rate: int | None = None, top_k: int = 5,
                 timestamps: bool = False, explain: bool = False,
                 events=None) -> Iterator[TagResult | TagFailure]:
        """Tags files and/or arrays, yielding one `TagResult` or `TagFailure` per item, in
        order. A file that cannot be decoded (or a bad array) is a `TagFailure` with a one-line
        reason naming it; the others are unaffected. `sample_rate` applies to arrays (default:
        the model's rate); files are resampled from their own rate. `timestamps` adds a
        `Segment` per second, `explain` an `Explanation` per label, `events` (an
        `EventOptions`) the clip's events in time."""
        from keras_dae.audio import AudioDecodeError

        for clip in self._scored_clips(items, sample_rate):
            if isinstance(clip.error, AudioDecodeError):  # its message names the file
                yield TagFailure(clip.source, str(clip.error))
            elif clip.error is not None:
                yield TagFailure(clip.source, f"{clip.source}: {clip.error}")
            else:
                yield self._result(clip, top_k, timestamps, explain, events)

    def tag(self, audio, sample_rate: int | None = None, top_k: int = 5,
            timestamps: bool = False, explain: bool = False, events=None) -> TagResult:
        """Tags one file (a path) or array (`(samples,)`, at `sample_rate`, default the
        model's). Raises `AudioDecodeError` for a file that cannot be decoded and
        `ValueError` for a bad array, with a one-line message naming it."""
        from keras_dae.audio import AudioDecodeError

        result = next(self.tag_many([audio], sample_rate, top_k, timestamps, explain, events))
        if isinstance(result, TagFailure):
            if isinstance(audio, (str, os.PathLike)):
                raise AudioDecodeError(result.reason)
            raise InputError(result.reason)
        return result

    def explain(self, audio, sample_rate: int | None = None,
                top_k: int = 5) -> tuple[Explanation, ...]:
        """Which stream spoke for each of the clip's `top_k` labels: an `Explanation` per
        label, best first (`tag(..., explain=True).explanations`)."""
        return self.tag(audio, sample_rate, top_k, explain=True).explanations

    def events(self, audio, sample_rate: int | None = None, options=None) -> tuple:
        """Sound events in time: `keras_dae.events.Event`s (onset, offset, label, score)
        from the fused scores of the clip's windows (one every `hop_seconds`; 0.25 s suits
        events), post-processed as `options` (`keras_dae.events.EventOptions`, default
        `EventOptions()`) says."""
        from keras_dae.events import EventOptions

        return self.tag(audio, sample_rate, top_k=0, events=options or EventOptions()).events

    def embed(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """The clip's `(embedding_size,)` float32 embedding: the mean over its chunks of the
        concatenated stream embeddings (see `TagResult.embedding`)."""
        return self.tag(audio, sample_rate, top_k=0).embedding


@functools.lru_cache(maxsize=2)
def _cached_tagger(model) -> Tagger:
    return Tagger(model)


def tag(audio, model=DEFAULT_MODEL, sample_rate: int | None = None, top_k: int = 5,
        timestamps: bool = False) -> TagResult:
    """One call from a file or an array to labels and embeddings (see `Tagger.tag`). The
    model is loaded on the first call and kept for the next ones."""
    return _cached_tagger(_model_key(model)).tag(audio, sample_rate, top_k, timestamps)


def embed(audio, model=DEFAULT_MODEL, sample_rate: int | None = None) -> np.ndarray:
    """One call from a file or an array to its `(256,)` embedding (see `Tagger.embed`)."""
    return _cached_tagger(_model_key(model)).embed(audio, sample_rate)


def _model_key(model):
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model).expanduser().resolve()) if Path(model).exists() else str(model)
    return model

