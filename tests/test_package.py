"""The release package: `python -m build` makes an sdist and a wheel holding every file of
`keras_dae`, among them the shipped preset, the vocabularies and the demo clips.

CI also installs the wheel with the [jax] extra alone in a fresh virtualenv and runs
`keras-dae demo` there (the end of .ci/run).
"""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from keras_dae.version import __version__

# The backend does not change what these tests check: tests/run.sh runs them once.
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sdist_and_wheel_hold_every_file_of_the_package(tmp_path):
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "keras_dae"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0 or not listed.stdout:
        pytest.skip("not a git checkout: nothing to compare the package with")
    expected = set(listed.stdout.splitlines())
    assert {"keras_dae/zoo/shipped/diverse_sampled15/model.weights.h5",
            "keras_dae/zoo/shipped/diverse_sampled15/labels.csv",
            "keras_dae/zoo/vocabularies/fsd50k.csv", "keras_dae/data/demo/dog_bark.ogg",
            "keras_dae/data/speech_front_center.wav"} <= expected
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    # One version, from keras_dae/version.py, in both file names.
    (wheel,) = tmp_path.glob("*.whl")
    (sdist,) = tmp_path.glob("*.tar.gz")
    assert wheel.name == f"keras_dae-{__version__}-py3-none-any.whl"
    assert sdist.name == f"keras_dae-{__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("keras_dae/")}
    assert in_wheel == expected
    with tarfile.open(sdist) as archive:
        in_sdist = {member.name.split("/", 1)[1] for member in archive.getmembers()
                    if member.isfile()}
    assert expected <= in_sdist
    assert {"pyproject.toml", "README.md", "CHANGELOG.md"} <= in_sdist
