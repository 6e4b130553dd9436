"""The examples in README.md and docs/ run, and the generated results tables are up to date.

What runs (see docs/testing.md):
- every ```python block of a page, in order, in one namespace per page, from the repository
  root (mktestdocs);
- every line of every ```bash block that starts with `keras-dae` or `python tflite/` (after
  optional `NAME=value` environment settings), as a command that must exit with status 0.
Blocks fenced as ```text, ```console or ```py are shown, not run; so are pip commands.
Only the cheap pages run in the fast suite; the rest carry the `slow` mark.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

# The backend does not change what these tests check: tests/run.sh runs them once.
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUNNABLE_COMMAND = re.compile(r"^((?:[A-Z_]+=\S+\s+)*)(keras-dae|python tflite/)(.*)$")
# The fast suite runs the examples of two pages (the front ends alone; one model tagging a
# clip); every other page builds, fine-tunes or exports models, and each command starts a
# process that loads one: together they take minutes, so they carry the slow mark.
FAST_PYTHON = {"frontends.md", "tagging.md"}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, lang: str) -> list[str]:
    return [body for fence, body in FENCE.findall(page.read_text()) if fence == lang]


def commands(page: Path) -> list[str]:
    """The runnable lines of a page's bash blocks (a trailing backslash joins lines)."""
    found = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            if RUNNABLE_COMMAND.match(line.split("#")[0].strip()):
                found.append(line.split("  #")[0].strip())
    return found


def python_params():
    for page in PAGES:
        if blocks(page, "python"):
            marks = [] if page.name in FAST_PYTHON else [pytest.mark.slow]
            yield pytest.param(page, id=page_id(page), marks=marks)


def command_params():
    for page in PAGES:
        for i, command in enumerate(commands(page)):
            yield pytest.param(command, id=f"{page_id(page)}:{i}", marks=[pytest.mark.slow])


def test_pages_have_examples_to_run():
    """The fence conventions are in use: a renamed fence would silently stop a test."""
    assert len(list(python_params())) >= 6
    assert len(list(command_params())) >= 8
    for page in PAGES:
        for fence, _ in FENCE.findall(page.read_text()):
            assert fence in {"python", "bash", "text", "console", "py"}, (page_id(page), fence)


@pytest.mark.parametrize("page", list(python_params()))
def test_python_examples(page, monkeypatch):
    from mktestdocs import check_md_file

    monkeypatch.chdir(ROOT)
    check_md_file(page, memory=True, lang="python")


@pytest.mark.parametrize("command", list(command_params()))
def test_command_examples(command, tmp_path):
    settings, program, rest = RUNNABLE_COMMAND.match(command).groups()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    for setting in shlex.split(settings):
        name, value = setting.split("=", 1)
        env[name] = value
    argv = ([sys.executable, "-m", "keras_dae.cli"] if program == "keras-dae"
            else [sys.executable, "tflite/" + rest.split()[0]])
    argv += shlex.split(rest)[0 if program == "keras-dae" else 1:]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def test_generated_tables_are_up_to_date():
    """benchmarks/tables/*.md and README's results table equal what the JSON gives."""
    done = subprocess.run([sys.executable, "benchmarks/tables.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
