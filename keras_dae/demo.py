"""What `keras-dae demo` shows: the shipped preset on a few bundled real recordings.

    from keras_dae import demo
    from keras_dae.inference import Tagger

    tagger = Tagger()                                    # the shipped preset
    results = demo.run(tagger)                           # TagResults with per-second labels
    print(demo.describe(results[0], tagger))             # with each label's stream shares
    demo.plot(results, "demo.png", tagger.class_names, tagger.stream_names)  # matplotlib

The clips (keras_dae/data/demo/, sources and licences in its README.md) come from recordings
that the preset's training data kept out of training (its eval and val splits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_dae import atomic
from keras_dae.audio import load_audio
from keras_dae.data.bundled import DEMO_CLIPS, demo_clips  # noqa: F401  (part of this API)
from keras_dae.inference import Tagger, TagResult, display_label, event_text, format_labels

LABEL_THRESHOLD = 0.5
CAPTION = (
    "Each second's labels scoring 0.5 or more (from the 1 s window over it; faded: the best "
    "one when none does),\nthe mel spectrogram with the clip's events in time (bars along its "
    "top), and the fused scores\nof the clip's top classes over time (1 s windows every 0.5 s)."
)
# What the picture shows, in a line.
PICTURE = ("per-second labels, spectrograms with events in time, fused scores over time, "
           "each stream's scores beside the fused ones, and each top label's stream shares")
TABLE_CAPTION = (
    "Clip scores (mean over its windows)\nof the fused head and of each\nstream's own head"
)
SHARES_CAPTION = (
    "Each top label's fused logit, split\nover the streams (right: for it,\nleft: against "
    "it; \u2260: the streams'\nown scores differ by 0.5 or more)"
)
DISAGREE_MARK = "\u2260 disagree"
# Stream -> colour of its share bars (muted, unlike the strong class colours).
STREAM_COLOURS = {"pitch": "#66c2a5", "timbre": "#fc8d62", "neuralogram": "#8da0cb",
                  "end_to_end": "#e78ac3"}
STREAM_TITLES = {"fused": "fused", "pitch": "pitch", "timbre": "timbre",
                 "neuralogram": "neuralo-\ngram", "end_to_end": "end-to-\nend"}


def heading(tagger, model_name: str) -> str:
    """`keras-dae demo: model NAME (C classes, streams ...), keras backend B`."""
    import keras

    return (f"keras-dae demo: model {model_name} ({len(tagger.class_names)} classes, streams "
            f"{', '.join(tagger.stream_names)}), keras backend {keras.backend.backend()}")


def run(tagger: Tagger, paths=None, top_k: int = 3) -> list[TagResult]:
    """Tags `paths` (default: the bundled clips) with per-second labels and events in time
    (`keras_dae.events`' default rules). Raises `AudioDecodeError` if one cannot be read."""
    from keras_dae.events import EventOptions

    paths = list(paths) if paths is not None else demo_clips()
    return [tagger.tag(path, top_k=top_k, timestamps=True, explain=True,
                       events=EventOptions())
            for path in paths]


def describe(result: TagResult, tagger: Tagger) -> str:
    """The clip's labels, each stream's own top label, each top label's stream shares
    (`Explanation.to_text`), and the labels of each second."""
    name = Path(result.source).name
    lines = [f"{name}  ({result.duration:.2f} s)  {format_labels(result.labels)}"]
    streams = []
    for stream in tagger.stream_names:
        best = int(np.argmax(result.scores[stream]))
        streams.append(f"{stream} {display_label(tagger.class_names[best])} "
                       f"{result.scores[stream][best]:.2f}")
    lines.append(f"  {'streams':>12}  " + " | ".join(streams))
    lines += [f"  {'shares':>12}  {e.to_text()}" for e in result.explanations]
    for segment in result.per_second:
        span = f"{segment.start:.1f}-{segment.end:.1f} s"
        lines.append(f"  {span:>12}  {format_labels(segment.labels)}")
    lines += [f"  {event_text(event)}" for event in result.events]
    return "\n".join(lines)


def _class_colours(results: list[TagResult], class_names, top_classes: int) -> dict:
    """Class index -> colour, for the classes the picture shows, in order of appearance:
    the strong colours of tab10 first, then Dark2's."""
    import matplotlib

    palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    palette += list(matplotlib.colormaps["Dark2"].colors)  # (tab10's grey is left out)
    index = {name: i for i, name in enumerate(class_names)}
    colours: dict[int, tuple] = {}
    for result in results:
        shown = [index[x.label] for s in result.per_second for x in _shown_labels(s)]
        shown += list(np.argsort(-result.scores["fused"], kind="stable")[:top_classes])
        shown += [index[e.label] for e in result.events]
        for k in shown:
            if int(k) not in colours:
                colours[int(k)] = palette[len(colours) % len(palette)]
    return colours


def _shown_labels(segment) -> list:
    """The labels of a second that score at least `LABEL_THRESHOLD` (at most two), or the
    best one when none does."""
    shown = [x for x in segment.labels if x.score >= LABEL_THRESHOLD][:2]
    return shown or [segment.labels[0]]


def _draw_events(axes, events, colours: dict, index: dict, height: int) -> None:
    """The clip's events as bars along the top of its spectrogram, one lane per class."""
    from matplotlib.patches import Rectangle

    lanes = list(dict.fromkeys(e.label for e in events))[:4]
    lane = height * 0.11
    for event in events:
        if event.label not in lanes:
            continue
        colour = colours[index[event.label]]
        bottom = height - (lanes.index(event.label) + 1) * lane
        axes.add_patch(Rectangle((event.onset, bottom + lane * 0.1), event.offset - event.onset,
                                 lane * 0.8, facecolor=colour, alpha=0.9,
                                 edgecolor="white", lw=0.6))
        axes.text(event.onset + 0.03, bottom + lane / 2, display_label(event.label),
                  fontsize=6.5, va="center", ha="left", clip_on=True,
                  color=_text_colour(colour))


def _stream_colours(stream_names) -> dict:
    """Stream -> colour of its share bars: `STREAM_COLOURS`, then Set2's others in turn."""
    import matplotlib

    spare = [c for c in matplotlib.colormaps["Set2"].colors
             if matplotlib.colors.to_hex(c) not in STREAM_COLOURS.values()]
    colours = {}
    for name in stream_names:
        colours[name] = STREAM_COLOURS.get(name) or spare[len(colours) % len(spare)]
    return colours


def _draw_shares(axes, explanations, stream_colours: dict, colours: dict, index: dict) -> None:
    """Each top label's stream shares as one diverging bar: the streams that speak for it to
    the right of 0, those against it to the left (stacked in stream order), under a title of
    the label and its fused score, with `DISAGREE_MARK` after it when the streams disagree."""
    inches_per_unit = axes.get_position().width * axes.figure.get_figwidth() / 2.0
    blank = {"facecolor": "white", "edgecolor": "none", "pad": 1.0}  # lines pass behind titles
    for row, explanation in enumerate(explanations):
        right = left = 0.0
        for name, share in explanation.shares.items():
            start = right if share >= 0 else left - abs(share)
            if share >= 0:
                right += share
            else:
                left -= abs(share)
            axes.barh(row, abs(share), left=start, height=0.46, color=stream_colours[name],
                      edgecolor="white", lw=0.6)
            text = f"{100 * abs(share):.0f}%"
            if abs(share) * inches_per_unit > (len(text) + 0.6) * 6.5 * 0.6 / 72:
                axes.text(start + abs(share) / 2, row, text, ha="center", va="center",
                          fontsize=6.5, color="0.1")
        colour = colours.get(index[explanation.label], "0.2")
        title = axes.text(-1.0, row - 0.3, f"{display_label(explanation.label)} "
                          f"{explanation.score:.2f}", ha="left", va="bottom", fontsize=8,
                          fontweight="bold", color=colour, zorder=4, bbox=blank)
        if explanation.disagree:
            axes.annotate(DISAGREE_MARK, xy=(1, 0), xycoords=title, xytext=(4, 0),
                          textcoords="offset points", ha="left", va="bottom", fontsize=7,
                          color="0.25", fontstyle="italic", zorder=4, bbox=blank)
    axes.axvline(0, color="0.3", lw=0.8, zorder=3)
    axes.set_xlim(-1.0, 1.0)
    axes.set_ylim(len(explanations) - 0.45, -1.05)
    axes.set_xticks([-1, -0.5, 0, 0.5, 1], ["100%", "50%", "0", "50%", "100%"])
    axes.set_yticks([])
    axes.tick_params(labelsize=6.5, length=2)
    axes.grid(axis="x", color="0.9", lw=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)


def _text_colour(rgb) -> str:
    r, g, b = rgb[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def _log_mel(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=waveform, sr=sample_rate, n_fft=1024,
                                         hop_length=160, n_mels=80, fmax=sample_rate / 2)
    return librosa.power_to_db(mel, ref=np.max, top_db=80.0)


def plot(results: list[TagResult], path, class_names, stream_names, sample_rate: int = 16000,
         title: str = "", top_classes: int = 4):
    """Writes the demo picture to `path` and returns it.

    One row per clip: on the left, the labels of each second (the fused labels of the 1 s
    window over it that score 0.5 or more, at most two; else the best one, faded), the mel
    spectrogram, and the fused scores of the clip's top classes over
    time (one point per 1 s chunk, at its centre); then the clip's scores for its top classes
    from the fused head and from each stream's own head; on the right, each top label's
    stream shares of its fused logit (`TagResult.explanations`, which `run` asks for), one
    diverging bar per label. Every class keeps one colour, and every stream one.
    """
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = _class_colours(results, class_names, top_classes)
    stream_colours = _stream_colours(stream_names)
    index = {name: i for i, name in enumerate(class_names)}
    columns = ["fused", *stream_names]
    max_duration = max(max(r.duration for r in results), 1.0)
    n = len(results)
    width, top = 14.0, 1.75
    height = 2.75 * n + top + 0.22
    fig = plt.figure(figsize=(width, height))
    # Columns (inches): the clip over time, room for its legend, the score table, room for
    # the table's class names, the stream shares.
    outer = fig.add_gridspec(n, 5, width_ratios=[6.0, 1.35, 2.25, 1.3, 2.06], wspace=0.0,
                             hspace=0.55, left=0.84 / width, right=1 - 0.2 / width,
                             top=1 - top / height, bottom=0.62 / height)
    for row, result in enumerate(results):
        left = outer[row, 0].subgridspec(3, 1, height_ratios=[0.68, 2.0, 1.15], hspace=0.06)
        chips, spec, lines = (fig.add_subplot(left[i]) for i in range(3))
        waveform = load_audio(result.source, sample_rate)
        duration = result.duration

        # The labels of each second, as coloured chips: up to two lanes.
        inches_per_second = chips.get_position().width * fig.get_figwidth() / max_duration
        for segment in result.per_second:
            shown = _shown_labels(segment)
            width = segment.end - segment.start
            lane = 0.9 / len(shown)
            for j, label in enumerate(shown):
                colour = colours[index[label.label]]
                faded = label.score < LABEL_THRESHOLD
                bottom = 0.05 + (len(shown) - 1 - j) * lane
                chips.add_patch(Rectangle((segment.start + 0.01, bottom + 0.015), width - 0.02,
                                          lane - 0.03, facecolor=colour,
                                          alpha=0.4 if faded else 1.0, edgecolor="none"))
                size = 7.5 if len(shown) == 1 else 7
                text = f"{display_label(label.label)} {label.score:.2f}"
                if len(text) * size * 0.6 / 72 > 0.95 * width * inches_per_second:
                    text = display_label(label.label)  # no room for the score
                    size = size if len(text) * size * 0.6 / 72 < width * inches_per_second else 6
                chips.text(segment.start + width / 2, bottom + lane / 2, text, ha="center",
                           va="center", fontsize=size, clip_on=True,
                           color="black" if faded else _text_colour(colour))
        chips.set_xlim(0, max_duration)
        chips.set_ylim(0, 1)
        chips.axis("off")
        chips.set_title(f"{Path(result.source).name}   ({duration:.2f} s)", loc="left",
                        fontsize=10, fontweight="bold", pad=3)

        # The spectrogram.
        mel = _log_mel(waveform, sample_rate)
        spec.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                    vmin=np.percentile(mel, 15), vmax=mel.max(),
                    extent=(0, duration, 0, mel.shape[0]), interpolation="nearest")
        spec.set_xlim(0, max_duration)
        centre_hz = librosa.mel_frequencies(n_mels=mel.shape[0] + 2, fmax=sample_rate / 2)[1:-1]
        ticks = [(250, "250 Hz"), (1000, "1 kHz"), (4000, "4 kHz")]
        spec.set_yticks([int(np.argmin(np.abs(centre_hz - hz))) + 0.5 for hz, _ in ticks],
                        [text for _, text in ticks], fontsize=6.5)
        spec.set_ylabel("mel\nspectrum", fontsize=8)
        spec.tick_params(labelbottom=False, length=2)
        spec.set_facecolor("0.96")
        for side in ("top", "right"):
            spec.spines[side].set_visible(False)
        _draw_events(spec, result.events, colours, index, mel.shape[0])

        # Fused scores over time of the clip's top classes.
        centres = result.chunk_times
        fused = result.chunk_scores["fused"]
        top = np.argsort(-result.scores["fused"], kind="stable")[:3]
        for k in top:
            x = np.concatenate([[0.0], centres, [duration]])
            y = np.concatenate([[fused[0, k]], fused[:, k], [fused[-1, k]]])
            lines.plot(x, y, color=colours[k], lw=1.8, label=display_label(class_names[k]))
            lines.plot(centres, fused[:, k], "o", color=colours[k], ms=3)
        lines.set_xlim(0, max_duration)
        lines.set_ylim(-0.04, 1.08)
        lines.set_yticks([0, 0.5, 1])
        lines.tick_params(labelsize=7, length=2)
        lines.set_ylabel("fused\nscore", fontsize=8)
        lines.grid(axis="y", color="0.9", lw=0.6)
        for side in ("top", "right"):
            lines.spines[side].set_visible(False)
        lines.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7.5,
                     frameon=False, handlelength=1.0, borderaxespad=0.3)
        if row == n - 1:
            lines.set_xlabel("time (s)", fontsize=9)

        # Fused and per-stream clip scores of the top classes.
        table = fig.add_subplot(outer[row, 2])
        classes = np.argsort(-result.scores["fused"], kind="stable")[:top_classes]
        values = np.array([[result.scores[c][k] for c in columns] for k in classes])
        table.imshow(values, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                table.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                           color="white" if values[i, j] > 0.55 else "0.15",
                           fontweight="bold" if j == 0 else "normal")
        table.axvline(0.5, color="white", lw=3)
        table.set_xticks(range(len(columns)))
        table.set_xticklabels([STREAM_TITLES.get(c, c) for c in columns], fontsize=7.5)
        table.xaxis.tick_top()
        table.set_yticks(range(len(classes)))
        table.yaxis.tick_right()
        table.set_yticklabels([display_label(class_names[k]) for k in classes], fontsize=8)
        for label, k in zip(table.get_yticklabels(), classes, strict=True):
            label.set_color(colours[k])
            label.set_fontweight("bold")
        table.tick_params(length=0)
        for spine in table.spines.values():
            spine.set_visible(False)

        # Each top label's stream shares of its fused logit.
        shares = fig.add_subplot(outer[row, 4])
        if result.explanations:
            _draw_shares(shares, result.explanations, stream_colours, colours, index)
        else:  # tagged without explain=True
            shares.axis("off")
            shares.text(0, 0.5, "no stream shares\n(tagged without explain=True)",
                        fontsize=8, color="0.4", va="center", transform=shares.transAxes)
        if row == n - 1:
            shares.set_xlabel("share of the fused logit\n\u2190 against          for \u2192",
                              fontsize=8)
    if title:
        fig.text(0.06, 1 - 0.3 / height, title, fontsize=13, fontweight="bold", va="top")
    fig.text(0.06, 1 - 0.68 / height, CAPTION, fontsize=9, color="0.3", va="top")
    middle = outer[0, 2].get_position(fig)
    fig.text(middle.x0, 1 - 0.68 / height, TABLE_CAPTION, fontsize=9, color="0.3", va="top")
    right = outer[0, 4].get_position(fig)
    fig.text(right.x0, 1 - 0.68 / height, SHARES_CAPTION, fontsize=8.5, color="0.3", va="top")
    fig.legend([Rectangle((0, 0), 1, 1, color=stream_colours[s]) for s in stream_names],
               list(stream_names), loc="upper left", ncol=2, fontsize=7.5, frameon=False,
               bbox_to_anchor=(right.x0, 1 - 1.33 / height), borderaxespad=0,
               handlelength=1.0, handleheight=0.8, columnspacing=1.0, labelspacing=0.25)
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path
