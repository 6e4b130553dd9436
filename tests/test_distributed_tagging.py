"""Tagging and embedding on Ray (`keras_dae.distributed`, `keras-dae predict/embed --ray`).

Two short jobs (slow tests) on local Ray clusters of at most 2 CPUs, with the shipped preset,
on real recordings in a directory tree with a bad file and an empty one among them: the first
(Python, 2 workers) writes the Parquet rows; a rerun finds nothing to do; the second (the
command line, 1 worker) fills the gap a deleted part left. The rows' scores equal those of
`keras-dae predict --json`, and of the `Tagger` behind it. The refusals (no Ray, flags that do
not fit) and the `ray` extra's dependencies are fast tests.

Run the slow ones in a pytest process of their own (as .ci/run does): after `ray.shutdown()`
Ray's threads still resolve "localhost" now and then, which the no-network guard of tests run
later in the same process counts as network access.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR

from keras_dae import cli, distributed, extras
from keras_dae.inference import TagFailure, Tagger
from keras_dae.validation import InputError

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

# What it checks does not depend on the backend; each job starts Ray and workers that load
# Keras, so it runs once (under PyTorch, tests/run.sh).
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keras_dae" / "data" / "demo"
MODEL = "diverse_sampled15"
GOOD = 6
# The tests that run a Ray job: starting Ray and workers that load Keras and the model takes
# over a minute on 2 shared CPUs.
RAY_JOB = pytest.mark.slow
BAD = {"b/not_audio.wav": "a text file, not audio", "empty.wav": "empty file"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A directory tree of 6 real recordings (5 demo clips, one speech recording), a text
    file named .wav and an empty .wav."""
    root = tmp_path_factory.mktemp("distributed_inputs")
    for i, clip in enumerate(sorted(DEMO.glob("*.ogg"))):
        (root / "ab"[i % 2]).mkdir(exist_ok=True)
        shutil.copy(clip, root / "ab"[i % 2] / clip.name)
    shutil.copy(DATA_DIR / "speech_front_center.wav", root / "speech.wav")
    shutil.copy(DATA_DIR / "bad" / "text.wav", root / "b" / "not_audio.wav")
    (root / "empty.wav").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def first_job(inputs, tmp_path_factory):
    """`embed_files` on a new local Ray cluster of 2 CPUs, 2 workers, 3 files a part."""
    out = tmp_path_factory.mktemp("distributed") / "rows"
    report = distributed.embed_files([inputs], out, MODEL, workers=2, top_k=15,
                                     files_per_task=3)
    return out, report


def _rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out)
    assert len(set(table.column("path").to_pylist())) == table.num_rows  # no path twice
    return {row["path"]: row for row in table.to_pylist()}


@RAY_JOB
def test_every_file_is_a_row_and_bad_files_carry_their_error(inputs, first_job):
    out, report = first_job
    assert (report.tagged, len(report.failures), report.already_done) == (GOOD, len(BAD), 0)
    assert report.workers == 2
    assert len(list(out.glob("part-*.parquet"))) == 3  # 8 files, 3 a part
    rows = _rows(out)
    assert len(rows) == GOOD + len(BAD)
    for name, phrase in BAD.items():
        row = rows[str(inputs / name)]
        assert str(inputs / name) in row["error"] and phrase in row["error"]
        assert row["duration"] is None and row["scores"] is None and row["embedding"] is None
    assert sorted(f.source for f in report.failures) == sorted(str(inputs / n) for n in BAD)

    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    recorded = json.loads(schema.metadata[distributed.METADATA_KEY])
    assert recorded["settings"]["model"] == MODEL and recorded["settings"]["embeddings"]
    streams = recorded["stream_names"]
    assert schema.names == ["path", "duration", "error", "labels", "scores", "embedding",
                            *(f"embedding_{s}" for s in streams)]
    for row in rows.values():
        if row["error"] is None:
            assert len(row["scores"]) == len(recorded["class_names"]) == 15
            assert len(row["labels"]) == 15 and len(row["embedding"]) == 64 * len(streams)
            embedding = np.asarray(row["embedding"])
            for i, stream in enumerate(streams):
                np.testing.assert_array_equal(row[f"embedding_{stream}"],
                                              embedding[i * 64:(i + 1) * 64])


@RAY_JOB
def test_scores_equal_those_of_predict_json_and_its_tagger(inputs, first_job, capsys):
    out, _ = first_job
    rows = _rows(out)
    classes = json.loads(pq.read_schema(next(out.glob("part-*.parquet")))
                         .metadata[distributed.METADATA_KEY])["class_names"]
    assert cli.main(["predict", str(inputs), "--model", MODEL, "--json", "--top-k", "15"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tagged = [record for record in printed if "error" not in record]
    assert len(tagged) == GOOD
    for record in tagged:
        row = rows[os.path.abspath(record["path"])]
        assert row["duration"] == pytest.approx(record["duration"], abs=1e-3)
        assert [x["label"] for x in row["labels"]] == [x["label"] for x in record["labels"]]
        for label in record["labels"]:  # predict --json rounds scores to 4 decimals
            assert row["scores"][classes.index(label["label"])] == pytest.approx(
                label["score"], abs=5e-5 + 1e-6)

    tagger = Tagger(MODEL)  # what predict rounds: the same numbers, unrounded
    assert list(tagger.class_names) == classes
    for result in tagger.tag_many(sorted(rows), top_k=15):
        row = rows[result.source]
        if isinstance(result, TagFailure):
            assert row["error"] == result.reason
            continue
        np.testing.assert_allclose(row["scores"], result.scores["fused"], atol=1e-5)
        np.testing.assert_allclose(row["embedding"], result.embedding, atol=1e-5)
        assert row["duration"] == result.duration


@RAY_JOB
def test_a_rerun_skips_what_is_done_and_fills_a_deleted_part(inputs, first_job, capsys):
    out, _ = first_job
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = distributed.embed_files([inputs], out, MODEL, workers=2, top_k=15)
    assert (again.tagged, again.failures, again.already_done, again.workers) == (0, (), 8, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == parts

    # Other settings would mix rows that do not compare: refused, naming the difference.
    with pytest.raises(InputError, match="embeddings=True"):
        distributed.tag_files([inputs], out, MODEL)

    before = _rows(out)
    gone = sorted(out.glob("part-*.parquet"))[0]
    lost = set(pq.read_table(gone).column("path").to_pylist())
    gone.unlink()
    code = cli.main(["embed", str(inputs), "--ray", "--workers", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    good = [path for path in lost if before[path]["error"] is None]
    assert f"embedded {len(good)} of {len(lost)} files" in err
    assert f"{GOOD + len(BAD) - len(lost)} already in {out}" in err
    after = _rows(out)
    assert set(after) == set(before)
    for path in set(before) - lost:  # untouched parts
        assert after[path] == before[path]
    for path in lost:  # tagged again: the same numbers
        if before[path]["error"] is None:
            np.testing.assert_allclose(after[path]["scores"], before[path]["scores"], atol=1e-6)
        else:
            assert after[path]["error"] == before[path]["error"]


def test_missing_ray_names_the_extra(monkeypatch, tmp_path, capsys):
    real = extras.installed
    monkeypatch.setattr(extras, "installed", lambda module: module != "ray" and real(module))
    with pytest.raises(InputError, match=r'pip install "keras-dae\[ray\]"'):
        distributed.tag_files([DEMO], tmp_path / "rows")
    assert cli.main(["predict", str(DEMO), "--ray", "--out", str(tmp_path / "rows")]) == 2
    assert 'pip install "keras-dae[ray]"' in capsys.readouterr().err


@pytest.mark.parametrize("args, phrase", [
    (["predict", str(DEMO), "--ray", "--out", "rows", "--timestamps"], "--timestamps cannot"),
    (["predict", str(DEMO), "--ray"], "--ray needs --out DIR"),
    (["predict", str(DEMO), "--out", "rows"], "add --ray"),
    (["embed", str(DEMO), "--out", "x.npz", "--workers", "2"], "add --ray"),
    (["predict", "--ray", str(DEMO), "--out", "rows"], "put --ray after the inputs"),
])
def test_the_command_line_refuses_flags_that_do_not_fit(args, phrase, capsys):
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's refusal
        code = exit_.code
    assert code == 2
    assert phrase in capsys.readouterr().err


def test_the_ray_extra_installs_no_tensorflow_torch_or_jax():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    extra = re.findall(r'"([^"]+)"', re.search(r"^ray = \[(.*)\]$", pyproject, re.M).group(1))
    assert extra and any(r.startswith("ray[data]") for r in extra)
    requirements = [r for r in metadata.requires("ray") or [] if "extra ==" not in r
                    or 'extra == "data"' in r]
    for requirement in [*extra, *requirements]:
        name = requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip()
        assert name.lower() not in {"tensorflow", "torch", "jax", "jaxlib", "keras"}, requirement
