"""Clip lists with multi-hot targets: FSD50K, a CSV of paths and labels, or class folders.

Every reader returns a `ClipDataset`: audio paths, a `(n_clips, n_classes)` float32 multi-hot
target matrix, the class vocabulary (`labels`, with AudioSet `mids` where known) and one id
per clip. Nothing is decoded here; files named by the metadata that do not exist are left out
of the dataset, listed in `dataset.missing` and reported with a warning. Paths that exist but
are not audio (a directory, a FIFO, a broken file) are kept, and so are a class folder's
entries with an audio extension that are not regular files (FIFOs, broken or looping links):
the loader and the evaluation report, count and skip them with the reason.

Text inputs (CSVs, the vocabulary, metadata JSON) that are not valid UTF-8, CSV or JSON raise
`ValueError` naming the file and the line; no error message echoes more than a short excerpt
of a file. Entries that would lead outside the dataset's directory are refused: an FSD50K
`fname` must be a plain file name (as `write_fsd50k_layout` requires), and a class folder's
links to files outside its root are left out with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_dae.atomic import write_text
from keras_dae.validation import InputError, check

__all__ = [
    "AUDIO_EXTENSIONS",
    "DATASET_FORMATS",
    "UNSUPPORTED_AUDIO_EXTENSIONS",
    "FSD50K_SPLITS",
    "ClipDataset",
    "detect_format",
    "find_audio_files",
    "read_csv_dataset",
    "read_folder_dataset",
    "read_fsd50k",
    "read_fsd50k_vocabulary",
    "read_split",
    "read_unlabelled",
    "write_fsd50k_layout",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
# Audio that libsndfile cannot decode: a folder dataset reports such files instead of
# ignoring them silently (a CSV or FSD50K dataset lists them, and the loader refuses them).
UNSUPPORTED_AUDIO_EXTENSIONS = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka", ".amr",
                                ".mid", ".midi")
FSD50K_SPLITS = ("train", "val", "eval")

_DEV_AUDIO = "FSD50K.dev_audio"
_EVAL_AUDIO = "FSD50K.eval_audio"
_GROUND_TRUTH = "FSD50K.ground_truth"
_METADATA = "FSD50K.metadata"


def _cut(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters: errors never echo much of a file."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters."""
    return _cut(repr(value), limit)


def _read_text(path: Path, what: str, encoding: str = "utf-8") -> str:
    """The text of `path`; not valid UTF-8, or a NUL byte (a binary file), raises `ValueError`
    naming the file and line."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputError(f"{path}, line {line}: {what} is not text (it holds a NUL byte)")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"{path}, line {line}: {what} is not valid UTF-8 (byte 0x{data[error.start]:02x})"
        ) from None


def _csv_records(path: Path, reader) -> Iterator[tuple[int, object]]:
    """`(line, record)` of each record of a `csv.reader` or `csv.DictReader`, `line` being
    where the record starts; malformed CSV raises `ValueError` naming the file and line."""
    lines = reader.reader if isinstance(reader, csv.DictReader) else reader
    while True:
        line = lines.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise InputError(f"{path}, line {line}: not valid CSV ({error})") from None
        yield line, record


def _read_csv(path: Path, what: str, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """`(line, fields)` of each record of a CSV file (strict quoting)."""
    text = _read_text(path, what, encoding)
    return _csv_records(path, csv.reader(io.StringIO(text, newline=""), strict=True))


def _check_fname(fname: str, where: str) -> None:
    """An FSD50K `fname` is a plain file name: no path separator (it would lead outside the
    audio folder: `../x`, `/abs/x`), no comma, not `.` or `..`."""
    if (not fname or fname in (".", "..")
            or any(c in fname for c in ("/", "\\", ",", "\0"))):
        raise InputError(
            f"{where}: bad fname {_shown(fname)} (a plain file name: no '/', '\\' or ',')"
        )


@dataclass
class ClipDataset:
    """A list of audio clips and their multi-hot labels.

    Attributes:
        paths: audio file of each clip, `n_clips` paths.
        targets: float32 `(n_clips, n_classes)`, 1.0 where the clip has the class.
        labels: class names, `n_classes`, in target column order.
        mids: AudioSet id of each class (`"/m/09x0r"`), or `""` where unknown.
        clip_ids: one id per clip (FSD50K's `fname`, or the path relative to the metadata).
        groups: source of each clip (FSD50K: the Freesound uploader), for splits that keep a
            source on one side; `None` when unknown.
        missing: files named by the metadata that do not exist (left out of the dataset).
    """

    paths: list[Path]
    targets: np.ndarray
    labels: list[str]
    mids: list[str]
    clip_ids: list[str]
    groups: list[str] | None = None
    missing: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.paths = [Path(p) for p in self.paths]
        self.labels = [str(label) for label in self.labels]
        self.mids = [str(mid) for mid in self.mids]
        self.clip_ids = [str(c) for c in self.clip_ids]
        self.targets = np.asarray(self.targets, dtype=np.float32)
        n, k = len(self.paths), len(self.labels)
        if self.targets.ndim != 2 or self.targets.shape != (n, k):
            raise InputError(
                f"targets must have shape (n_clips, n_classes) = ({n}, {k}), "
                f"got {self.targets.shape}"
            )
        if len(self.mids) != k:
            raise InputError(f"mids has {len(self.mids)} entries for {k} labels")
        if len(set(self.labels)) != k:
            duplicates = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise InputError(f"labels must be unique, repeated: {duplicates}")
        if len(self.clip_ids) != n:
            raise InputError(f"clip_ids has {len(self.clip_ids)} entries for {n} clips")
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != n:
                raise InputError(f"groups has {len(self.groups)} entries for {n} clips")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"ClipDataset({len(self)} clips, {self.n_classes} classes"
            + (f", {len(self.missing)} missing files" if self.missing else "")
            + ")"
        )

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ClipDataset:
        """The clips at `indices` (ints, in that order), same vocabulary."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise InputError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} clips")
        return ClipDataset(
            paths=[self.paths[i] for i in idx],
            targets=self.targets[idx],
            labels=list(self.labels),
            mids=list(self.mids),
            clip_ids=[self.clip_ids[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            missing=list(self.missing),
        )

    def with_labels(self, labels: Sequence[str], name: str = "the data",
                    classes: str = "classes of the model") -> ClipDataset:
        """The same clips with targets re-indexed to the vocabulary `labels` (a model's
        classes, in its order); classes of `labels` the data lacks get no positives. A label of
        the data outside `labels` is refused (`ValueError` naming `name` and the labels)."""
        labels = [str(label) for label in labels]
        if self.labels == labels:
            return self
        unknown = sorted(set(self.labels) - set(labels))
        if unknown:
            raise InputError(f"{name}: labels {unknown} are not {classes}")
        column = {label: i for i, label in enumerate(labels)}
        targets = np.zeros((len(self), len(labels)), np.float32)
        for j, label in enumerate(self.labels):
            targets[:, column[label]] = self.targets[:, j]
        own_mids = dict(zip(self.labels, self.mids, strict=True))
        return ClipDataset(paths=self.paths, targets=targets, labels=labels,
                           mids=[own_mids.get(label, "") for label in labels],
                           clip_ids=self.clip_ids, groups=self.groups, missing=self.missing)

    def split_off(self, fraction: float, seed: int = 0,
                  min_clips: int = 3) -> tuple[ClipDataset, ClipDataset, list[str]]:
        """`(rest, held_out, too_few)`: about `fraction` of each class's clips held out (for
        validation), the rest kept, stratified by each clip's rarest label and seeded.

        Clips of one source (`groups`, when known) stay on one side. A class with fewer than
        `min_clips` clips (or sources) keeps them all: its name is in `too_few`, and it has
        no clip to be validated on. Raises `InputError` when nothing could be held out."""
        check("the fraction held out", fraction, "fraction")
        counts = self.label_counts()
        sources: dict[str, list[int]] = {}  # a source's clips (a clip alone when unknown)
        for i in range(len(self)):
            sources.setdefault(self.groups[i] if self.groups is not None else f"#{i}",
                               []).append(i)
        units: dict[int, dict[str, list[int]]] = {}  # rarest class -> source -> clips
        for source, clips in sources.items():
            present = np.flatnonzero(self.targets[clips].max(axis=0))
            if present.size:  # clips without labels stay in training
                key = int(present[np.argmin(counts[present])])
                units.setdefault(key, {})[source] = clips
        rng = np.random.default_rng(seed)
        held, too_few = [], []
        for key in sorted(units):
            sources = sorted(units[key])
            if len(sources) < min_clips:
                too_few.append(self.labels[key])
                continue
            wanted = max(1, round(fraction * sum(len(units[key][s]) for s in sources)))
            taken = 0
            for j in rng.permutation(len(sources)):
                if taken >= wanted:
                    break
                held += units[key][sources[j]]
                taken += len(units[key][sources[j]])
        if not held:
            raise InputError(f"too few clips to hold any out for validation: give each class "
                             f"at least {min_clips} clips (or sources), or a val split")
        mask = np.zeros(len(self), bool)
        mask[held] = True
        return self.subset(~mask), self.subset(mask), too_few

    def clip_labels(self, index: int) -> list[str]:
        """Class names of clip `index`."""
        return [self.labels[k] for k in np.flatnonzero(self.targets[index])]

    def label_counts(self) -> np.ndarray:
        """Number of clips of each class, int64 `(n_classes,)`."""
        return (self.targets > 0).sum(axis=0).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# FSD50K


def _split_field(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def read_fsd50k_vocabulary(path) -> tuple[list[str], list[str]]:
    """Reads FSD50K's `vocabulary.csv` (no header; rows `index,label,mid`) -> (labels, mids).

    Classes are ordered by their index column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FSD50K vocabulary file not found")
    rows = []
    for line, row in _read_csv(path, "the vocabulary"):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise InputError(
                f"{path}, line {line}: expected 3 fields index,label,mid, "
                f"got {len(row)}: {_shown(row)}"
            )
        try:
            index = int(row[0])
        except ValueError:
            raise InputError(
                f"{path}, line {line}: index {_shown(row[0])} is not an integer "
                "(vocabulary.csv has no header row)"
            ) from None
        rows.append((index, row[1].strip(), row[2].strip()))
    if not rows:
        raise InputError(f"{path}: vocabulary is empty")
    rows.sort()
    indices = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    if len(set(indices)) != len(indices):
        raise InputError(f"{path}: repeated class indices")
    if len(set(labels)) != len(labels):
        raise InputError(f"{path}: repeated labels")
    return labels, [r[2] for r in rows]


def _read_uploaders(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    try:
        info = json.loads(_read_text(path, "clip metadata"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(info, dict):
        raise InputError(
            f"{path}, line 1: expected a JSON object (fname -> clip info), "
            f"got a {type(info).__name__}"
        )
    return {str(k): str(v.get("uploader", "")) for k, v in info.items() if isinstance(v, dict)}


def read_fsd50k(root, split: str) -> ClipDataset:
    """Reads one split of FSD50K as distributed on Zenodo.

    Layout under `root`: `FSD50K.dev_audio/<fname>.wav`, `FSD50K.eval_audio/<fname>.wav`,
    `FSD50K.ground_truth/dev.csv` (`fname,labels,mids,split`, split is train or val: the
    official validation split), `eval.csv` (`fname,labels,mids`) and `vocabulary.csv` (no
    header, `index,label,mid`); `labels` and `mids` are comma-separated inside one quoted field.

    Args:
        root: the FSD50K directory.
        split: `"train"`, `"val"` (both from dev.csv) or `"eval"`.

    Targets are multi-hot over the vocabulary's order (200 classes for the real dataset).
    Groups are the Freesound uploaders when `FSD50K.metadata/<dev|eval>_clips_info_FSD50K.json`
    is present, else None. A label missing from the vocabulary, a repeated `fname` or one
    that is not a plain file name (`../x`, `/abs/x`) raises `ValueError` naming the CSV file,
    its line and the value; rows whose mids contradict the vocabulary's mids for their labels
    are reported with a warning (the labels are used); audio files that do not exist are left
    out, listed in `missing` and reported with a warning.
    """
    if split not in FSD50K_SPLITS:
        raise InputError(f"split must be one of {FSD50K_SPLITS}, got {split!r}")
    root = Path(root)
    truth = root / _GROUND_TRUTH
    if not truth.is_dir():
        raise FileNotFoundError(f"{truth}: not found; is {root} an FSD50K directory?")
    labels, mids = read_fsd50k_vocabulary(truth / "vocabulary.csv")
    column = {label: k for k, label in enumerate(labels)}
    part = "eval" if split == "eval" else "dev"
    csv_path = truth / f"{part}.csv"
    audio_dir = root / (_EVAL_AUDIO if part == "eval" else _DEV_AUDIO)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: FSD50K ground-truth file not found")
    expected = ["fname", "labels", "mids"] + (["split"] if part == "dev" else [])

    fnames, rows, contradicting = [], [], []
    records = _read_csv(csv_path, "the ground truth")
    line, header = next(records, (1, None))
    if header is None or [h.strip() for h in header] != expected:
        raise InputError(
            f"{csv_path}: header must be {','.join(expected)}, got {_shown(header)}"
        )
    seen: dict[str, int] = {}
    for line, row in records:
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(expected):
            raise InputError(
                f"{csv_path}, line {line}: expected {len(expected)} fields, got {len(row)}"
            )
        fname = row[0].strip()
        if not fname:
            raise InputError(f"{csv_path}, line {line}: empty fname")
        _check_fname(fname, f"{csv_path}, line {line}")
        fname_shown = _cut(fname)
        if fname in seen:
            raise InputError(
                f"{csv_path}, line {line}: fname {fname_shown} appears twice (first on line "
                f"{seen[fname]})"
            )
        seen[fname] = line
        if part == "dev":
            row_split = row[3].strip()
            if row_split not in ("train", "val"):
                raise InputError(
                    f"{csv_path}, line {line} (fname {fname_shown}): split must be train or "
                    f"val, got {_shown(row_split)}"
                )
            if row_split != split:
                continue
        row_labels = _split_field(row[1])
        for label in row_labels:
            if label not in column:
                raise InputError(
                    f"{csv_path}, line {line} (fname {fname_shown}): label {_shown(label)} is not "
                    f"in {truth / 'vocabulary.csv'}"
                )
        cols = [column[label] for label in row_labels]
        if sorted(_split_field(row[2])) != sorted(mids[k] for k in cols if mids[k]):
            contradicting.append((line, fname_shown))
        fnames.append(fname)
        rows.append(cols)
    if contradicting:
        (line, fname), n = contradicting[0], len(contradicting)
        warnings.warn(
            f"{csv_path}: {n} row{'s' if n > 1 else ''} whose mids contradict "
            f"{truth / 'vocabulary.csv'} for their labels (first: line {line}, fname {fname}); "
            "the labels are used",
            stacklevel=2,
        )

    uploaders = _read_uploaders(root / _METADATA / f"{part}_clips_info_FSD50K.json")
    paths, ids, groups, keep_rows, missing = [], [], [], [], []
    for fname, cols in zip(fnames, rows, strict=True):
        path = audio_dir / f"{fname}.wav"
        if not path.exists():  # other problems (a directory...) are the loader's to report
            missing.append(path)
            continue
        paths.append(path)
        ids.append(fname)
        keep_rows.append(cols)
        if uploaders is not None:
            groups.append(uploaders.get(fname, ""))
    _warn_missing(missing, csv_path)
    return ClipDataset(
        paths=paths,
        targets=_multi_hot(keep_rows, len(labels)),
        labels=labels,
        mids=mids,
        clip_ids=ids,
        groups=groups if uploaders is not None else None,
        missing=missing,
    )


def write_fsd50k_layout(
    root,
    dev_rows: Iterable[tuple[str, Sequence[str], Sequence[str], str]],
    eval_rows: Iterable[tuple],
    vocabulary: Sequence[tuple[str, str]],
) -> dict[str, Path]:
    """Writes FSD50K's ground-truth CSVs (exactly its format) and creates its audio folders.

    Args:
        root: directory to create the layout in (created if needed).
        dev_rows: `(fname, [labels], [mids], split)` with split `"train"` or `"val"`.
        eval_rows: `(fname, [labels], [mids])` (a 4th element, if any, is ignored).
        vocabulary: `(label, mid)` per class, in index order (written as `index,label,mid`).

    Audio goes in the returned `dev_audio` / `eval_audio` folders as `<fname>.wav`.
    Returns the paths: `dev_audio`, `eval_audio`, `ground_truth`, `dev_csv`, `eval_csv`,
    `vocabulary_csv`.
    """
    root = Path(root)
    vocabulary = [(str(label), str(mid)) for label, mid in vocabulary]
    known = {label for label, _ in vocabulary}
    for label, mid in vocabulary:
        if not label or "," in label or "," in mid:
            raise InputError(f"vocabulary: label {label!r} / mid {mid!r} may not hold a comma")
    if len(known) != len(vocabulary):
        raise InputError("vocabulary: repeated labels")

    def check(fname, labels, mids, where):
        fname = str(fname)
        _check_fname(fname, where)
        labels, mids = [str(x) for x in labels], [str(x) for x in mids]
        unknown = [x for x in labels if x not in known]
        if unknown:
            raise InputError(f"{where} (fname {fname}): labels {unknown} not in the vocabulary")
        if len(mids) != len(labels):
            raise InputError(f"{where} (fname {fname}): {len(labels)} labels, {len(mids)} mids")
        return fname, ",".join(labels), ",".join(mids)

    paths = {
        "dev_audio": root / _DEV_AUDIO,
        "eval_audio": root / _EVAL_AUDIO,
        "ground_truth": root / _GROUND_TRUTH,
    }
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    truth = paths["ground_truth"]
    paths.update(
        dev_csv=truth / "dev.csv",
        eval_csv=truth / "eval.csv",
        vocabulary_csv=truth / "vocabulary.csv",
    )

    def csv_text(header, rows) -> str:
        f = io.StringIO()
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        if header:
            w.writerow(header)
        w.writerows(rows)
        return f.getvalue()

    dev = []
    for i, row in enumerate(dev_rows):
        if len(row) != 4:
            raise InputError(f"dev_rows[{i}]: expected (fname, labels, mids, split)")
        fname, labels, mids, split = row
        if split not in ("train", "val"):
            raise InputError(f"dev_rows[{i}]: split must be train or val, got {split!r}")
        dev.append([*check(fname, labels, mids, f"dev_rows[{i}]"), split])
    evaluation = []
    for i, row in enumerate(eval_rows):
        if len(row) not in (3, 4):
            raise InputError(f"eval_rows[{i}]: expected (fname, labels, mids)")
        evaluation.append(check(*row[:3], f"eval_rows[{i}]"))
    # Every row is checked before anything is written, and each file is whole or absent.
    write_text(paths["vocabulary_csv"],
               csv_text(None, ([i, label, mid] for i, (label, mid) in enumerate(vocabulary))))
    write_text(paths["dev_csv"], csv_text(["fname", "labels", "mids", "split"], dev))
    write_text(paths["eval_csv"], csv_text(["fname", "labels", "mids"], evaluation))
    return paths


# ---------------------------------------------------------------------------------------------
# A CSV of paths and labels, and class folders


def read_csv_dataset(csv_path, labels: Sequence[str] | None = None) -> ClipDataset:
    """Reads a CSV with header `path,labels` (and optionally a `group` column).

    `labels` holds a clip's classes separated by commas (inside a quoted field) or by `;`.
    Paths are relative to the CSV file's directory (absolute paths are kept).

    Args:
        csv_path: the CSV file.
        labels: the vocabulary, in target order; default: the sorted union of the CSV's labels.
            A label outside a given vocabulary raises `ValueError` naming file, line and label.

    A row that repeats an earlier row's path is left out and reported with a warning (the
    first row's labels are used).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: CSV file not found")
    base = csv_path.parent
    entries, first_line, repeated = [], {}, []
    text = _read_text(csv_path, "the CSV", encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise InputError(f"{csv_path}, line 1: not valid CSV ({error})") from None
    fields = [h.strip() for h in header]
    if "path" not in fields or "labels" not in fields:
        raise InputError(
            f"{csv_path}: header must name the columns path,labels; got {_shown(fields)}"
        )
    reader.fieldnames = fields
    for line, row in _csv_records(csv_path, reader):
        if row.get(None):
            raise InputError(
                f"{csv_path}, line {line}: more fields than the header has; quote a labels "
                "field that holds commas, or separate labels with ';'"
            )
        raw_path = (row.get("path") or "").strip()
        if not raw_path:
            raise InputError(f"{csv_path}, line {line}: empty path")
        key = os.path.normpath(base / raw_path)
        if key in first_line:
            repeated.append((line, first_line[key], raw_path))
            continue
        first_line[key] = line
        row_labels = [x.strip() for x in re.split(r"[,;]", row.get("labels") or "")]
        row_labels = list(dict.fromkeys(x for x in row_labels if x))
        group = (row.get("group") or "").strip() if "group" in fields else None
        entries.append((line, raw_path, row_labels, group))
    if repeated:
        (line, first, raw_path), n = repeated[0], len(repeated)
        warnings.warn(
            f"{csv_path}: {n} row{'s' if n > 1 else ''} repeating an earlier row's path "
            f"{'were' if n > 1 else 'was'} left out (first: line {line} repeats line {first}, "
            f"{_shown(raw_path)})",
            stacklevel=2,
        )

    if labels is None:
        vocabulary = sorted({x for _, _, row_labels, _ in entries for x in row_labels})
    else:
        vocabulary = [str(x) for x in labels]
    column = {label: k for k, label in enumerate(vocabulary)}
    paths, ids, groups, rows, missing = [], [], [], [], []
    for line, raw_path, row_labels, group in entries:
        for label in row_labels:
            if label not in column:
                raise InputError(
                    f"{csv_path}, line {line} ({_shown(raw_path)}): label {_shown(label)} is "
                    "not in the given labels"
                )
        path = Path(raw_path)
        path = path if path.is_absolute() else base / path
        if not path.exists():  # other problems (a directory...) are the loader's to report
            missing.append(path)
            continue
        paths.append(path)
        ids.append(raw_path)
        groups.append(group)
        rows.append([column[label] for label in row_labels])
    _warn_missing(missing, csv_path)
    return ClipDataset(
        paths=paths,
        targets=_multi_hot(rows, len(vocabulary)),
        labels=vocabulary,
        mids=[""] * len(vocabulary),
        clip_ids=ids,
        groups=groups if "group" in fields else None,
        missing=missing,
    )


def read_folder_dataset(
    root, extensions: Sequence[str] = AUDIO_EXTENSIONS, allow_links_outside: bool = False
) -> ClipDataset:
    """One sub-folder of `root` per class, its audio files (searched recursively) inside.

    Every clip gets the one label of its folder. Classes are the sorted folder names that hold
    at least one audio file (`extensions`, case-insensitive; hidden files are ignored); folders
    without audio, and files in audio formats keras-dae cannot read (M4A, AAC, WMA, ...), are
    reported with a warning. Entries with an audio extension that are not regular files (a
    FIFO, a broken or looping link) are kept, for the loader to count and skip with the
    reason. Files that are links to outside `root` are left out with a warning, unless
    `allow_links_outside`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    real_root = root.resolve()
    classes, files, empty, unsupported, outside = [], [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        visible = [
            p
            for p in folder.rglob("*")
            if not p.is_dir()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        found = sorted(p for p in visible if p.suffix.lower() in extensions)
        if not allow_links_outside:
            escaping = {p for p in found if _links_outside(p, real_root)}
            outside += sorted(escaping)
            found = [p for p in found if p not in escaping]
        unsupported += sorted(p for p in visible
                              if p.is_file() and p.suffix.lower() in UNSUPPORTED_AUDIO_EXTENSIONS
                              and p.suffix.lower() not in extensions)
        if not found:
            empty.append(folder.name)
            continue
        classes.append(folder.name)
        files.append(found)
    if empty:
        warnings.warn(
            f"{root}: class folders without audio files were ignored: {empty}", stacklevel=2
        )
    if unsupported:
        warnings.warn(
            f"{root}: {len(unsupported)} files in audio formats keras-dae cannot read were "
            f"ignored (convert them to WAV or FLAC): {_first_five(unsupported, root)}",
            stacklevel=2,
        )
    if outside:
        warnings.warn(
            f"{root}: {len(outside)} files link to outside {root} and were left out "
            f"(allow_links_outside=True reads them): {_first_five(outside, root)}", stacklevel=2
        )
    if not classes:
        raise InputError(f"{root}: no class folder holds audio files ({', '.join(extensions)})")
    paths = [p for found in files for p in found]
    rows = [[k] for k, found in enumerate(files) for _ in found]
    return ClipDataset(
        paths=paths,
        targets=_multi_hot(rows, len(classes)),
        labels=classes,
        mids=[""] * len(classes),
        clip_ids=[p.relative_to(root).with_suffix("").as_posix() for p in paths],
        groups=None,
    )


def find_audio_files(directory) -> list[Path]:
    """The audio files under `directory`, recursively, sorted: regular files whose extension
    is one of `AUDIO_EXTENSIONS`, hidden files and folders left out."""
    directory = Path(directory)
    return sorted(
        p for p in directory.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


DATASET_FORMATS = ("fsd50k", "csv", "folders", "unlabelled")


def read_unlabelled(root) -> ClipDataset:
    """Every audio file under `root` (recursively) as a `ClipDataset` without classes (for
    pretraining); the folder of each file is its group (source)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory of audio files")
    paths = find_audio_files(root)
    if not paths:
        raise InputError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return ClipDataset(paths, np.zeros((len(paths), 0), np.float32), [], [],
                       [str(p.relative_to(root)) for p in paths],
                       groups=[str(p.parent.relative_to(root)) for p in paths])


def detect_format(root) -> str | None:
    """The layout of the dataset directory `root` (one of `DATASET_FORMATS`), or None when it
    is none of them: `FSD50K.ground_truth/` means fsd50k, a `train.csv` csv, a `train/`
    folder folders."""
    root = Path(root)
    if (root / _GROUND_TRUTH).is_dir():
        return "fsd50k"
    if (root / "train.csv").is_file():
        return "csv"
    if (root / "train").is_dir():
        return "folders"
    return None


def read_split(root, split: str, format: str | None = None) -> ClipDataset | None:
    """One split of a dataset directory, in one of the layouts keras-dae reads.

    - fsd50k: the FSD50K layout (`FSD50K.ground_truth/dev.csv` with its official train/val
      split, `eval.csv`, `vocabulary.csv`, and the `FSD50K.*_audio/` folders);
    - csv: `DIR/<split>.csv` files with a `path,labels` header;
    - folders: `DIR/<split>/<class>/<audio files>`;
    - unlabelled: every audio file under `DIR`, no classes (`read_unlabelled`): the train
      split, for pretraining; it has no other.

    `format=None` detects the layout (`detect_format`; never unlabelled). Returns None when
    the split is absent (csv, folders, unlabelled); an FSD50K split always exists.
    """
    root = Path(root)
    if format is None:
        format = detect_format(root)
        if format is None:
            raise FileNotFoundError(
                f"{root}: not a dataset directory (no {_GROUND_TRUTH}/, train.csv or train/)")
    if format not in DATASET_FORMATS:
        raise InputError(f"format must be one of {DATASET_FORMATS}, got {format!r}")
    if format == "fsd50k":
        return read_fsd50k(root, split)
    if format == "unlabelled":
        return read_unlabelled(root) if split == "train" else None
    if format == "csv":
        path = root / f"{split}.csv"
        return read_csv_dataset(path) if path.is_file() else None
    path = root / split
    return read_folder_dataset(path) if path.is_dir() else None


def _links_outside(path: Path, real_root: Path) -> bool:
    """Whether `path` is, or lies under, a link whose target is outside `real_root` (a
    looping link is not: the loader reports it)."""
    try:
        return not path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _multi_hot(rows: list[list[int]], n_classes: int) -> np.ndarray:
    targets = np.zeros((len(rows), n_classes), np.float32)
    for i, cols in enumerate(rows):
        targets[i, cols] = 1.0
    return targets


def _warn_missing(missing: list[Path], source: Path) -> None:
    if missing:
        warnings.warn(
            f"{source}: {len(missing)} audio files listed there do not exist and were left "
            f"out: {_first_five(missing)}",
            stacklevel=3,
        )


def _first_five(paths: list[Path], root: Path | None = None) -> str:
    """`"a, b, c, d, e and 7 more"`: paths (relative to `root` if given) for a warning."""
    shown = ", ".join(str(p if root is None else p.relative_to(root)) for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
