"""Presets and dependencies: what a damaged or hostile preset, or a missing optional package,
is refused with (one short line naming the file and the reason), and what is never done
first (building, allocating, echoing a file's content, printing raw escape sequences)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_dae import zoo
from keras_dae.inference import display_label
from keras_dae.messages import printable
from keras_dae.models import DiverseContrastive
from keras_dae.validation import InputError
from keras_dae.zoo import PresetError
from keras_dae.zoo import preset_files as files

REPO = Path(__file__).resolve().parents[1]
LONGEST_LINE = 400  # a refusal is one short line


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("KERAS_DAE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def saved_preset(tmp_path_factory):
    """diverse_tiny saved once, with labels; each test works on its own copy."""
    model = zoo.load("diverse_tiny", weights=None)
    return zoo.save(model, tmp_path_factory.mktemp("preset") / "tiny")


@pytest.fixture
def preset(saved_preset, tmp_path):
    return Path(shutil.copytree(saved_preset, tmp_path / "preset"))


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if Keras is asked to deserialize (build) anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the preset was refused")

    monkeypatch.setattr(keras.saving, "deserialize_keras_object", refuse)


def _refusal(directory, filename) -> str:
    with pytest.raises(PresetError) as error:
        zoo.load(directory)
    message = str(error.value)
    assert "\n" not in message and len(message) <= LONGEST_LINE, message
    assert str(directory / filename) in message
    return message


def _first(config, key):
    """The first dict in `config` (depth first) that has `key`."""
    if isinstance(config, dict):
        if key in config:
            return config
        children = config.values()
    elif isinstance(config, list):
        children = config
    else:
        return None
    for child in children:
        found = _first(child, key)
        if found is not None:
            return found
    return None


# (field, value): each a size no preset of keras-dae asks for, some that used to abort JAX
# with no output or allocate gigabytes before failing.
SIZES = [
    ("max_frames", 10**12), ("num_classes", 10**6), ("num_classes", 0),
    ("d_model", 10**9), ("intermediate_dim", 10**10), ("num_layers", 10**4),
    ("num_heads", 10**5), ("sample_rate", 10**12), ("n_fft", 10**9), ("hop_length", -1),
    ("n_filters", 10**7), ("n_mels", 10**6), ("units", 10**9), ("max_frames", float("nan")),
    ("max_frames", float("inf")), ("max_frames", "1000000000000"), ("max_frames", 10**400),
    ("feature_dims", {"pitch": 10**8}),
]


@pytest.mark.parametrize(("field", "value"), SIZES, ids=[f"{f}={str(v)[:12]}" for f, v in SIZES])
def test_sizes_are_bounded_before_anything_is_built(field, value, preset, nothing_built):
    config_path = preset / "config.json"
    config = json.loads(config_path.read_text())
    holder = _first(config, field)
    if field == "feature_dims":
        holder[field].update(value)
    else:
        holder[field] = value
    config_path.write_text(json.dumps(config))
    message = _refusal(preset, "config.json")
    assert f"bounds for {field!r}" in message
    low, high = files.CONFIG_BOUNDS[field]
    assert f"[{low}, {high}]" in message


def test_a_cqt_too_long_to_allocate_is_refused_first(preset, monkeypatch):
    """A tiny CQT `fmin` asks for kernels of gigabytes: refused before any is made."""
    from keras_dae.layers import constant_q_transform as cqt

    def refuse(*args, **kwargs):
        raise AssertionError("a CQT kernel was made before the preset was refused")

    monkeypatch.setattr(cqt, "_filter_fft", refuse)
    config_path = preset / "config.json"
    config = json.loads(config_path.read_text())
    _first(config, "bins_per_octave")["fmin"] = 1e-6
    config_path.write_text(json.dumps(config))
    message = _refusal(preset, "config.json")
    assert "raise `fmin`" in message


def test_the_bounds_admit_every_known_preset(preset):
    """The shipped preset's and every named preset's configs are within the bounds."""
    for directory in (preset, zoo.resolve_preset("diverse_sampled15")[1]):
        config = json.loads((directory / "config.json").read_text())
        files.check_config_sizes(config, directory / "config.json")
    for name, spec in zoo.PRESETS.items():
        model = (DiverseContrastive.from_preset(name, load_weights=False)
                 if spec.get("backbone_only") else zoo.load(name, weights=None))
        files.check_config_sizes(keras.saving.serialize_keras_object(model), Path(name))


BROKEN_JSON = {
    "deeply_nested": "[" * 100_000 + "]" * 100_000,
    "nested_beyond_the_bound": None,  # valid JSON, nested deeper than MAX_CONFIG_DEPTH
    "syntax_error": '{"class_name": "DiverseClassifier",\n "config": {oops}}',
    "huge_integer": '{"config": {"num_classes": ' + "9" * 5000 + "}}",
    "not_utf8": b'{"config": "\xff\xfe"}',
    "empty": "",
}


@pytest.mark.one_backend
@pytest.mark.parametrize("broken", BROKEN_JSON)
def test_malformed_config_is_one_line_naming_the_file(broken, preset, nothing_built):
    config_path = preset / "config.json"
    text = BROKEN_JSON[broken]
    if broken == "nested_beyond_the_bound":
        config = json.loads(config_path.read_text())
        deep = {}
        for _ in range(files.MAX_CONFIG_DEPTH + 5):
            deep = {"layer": deep}
        config["config"]["extra"] = deep
        text = json.dumps(config)
    if isinstance(text, bytes):
        config_path.write_bytes(text)
    else:
        config_path.write_text(text)
    message = _refusal(preset, "config.json")
    if broken == "syntax_error":
        assert "line 2, column" in message


def test_keras_errors_are_summarised_not_the_whole_config(preset):
    """Keras puts the whole object config in some errors: a refusal keeps one short line."""
    config_path = preset / "config.json"
    config = json.loads(config_path.read_text())
    layer = _first(config["config"]["featurizer"], "registered_name")
    layer["class_name"], layer["registered_name"] = "NoSuchLayer", "keras_dae>NoSuchLayer"
    config_path.write_text(json.dumps(config))
    message = _refusal(preset, "config.json")
    assert "NoSuchLayer" in message


SECRET = "secret-token-0123"


@pytest.mark.one_backend
@pytest.mark.parametrize("broken", ["missing", "not_utf8", "nul_bytes", "too_few",
                                    "out_of_order", "link_outside"])
def test_labels_must_be_utf8_text_matching_the_classes(broken, preset, tmp_path):
    labels = preset / "labels.csv"
    if broken == "missing":
        labels.unlink()
    elif broken == "not_utf8":
        labels.write_bytes(b"index,label,mid\n0,caf\xe9,\n")
    elif broken == "nul_bytes":
        labels.write_bytes(labels.read_bytes().replace(b"class_1", b"class\x001"))
    elif broken == "too_few":
        labels.write_text("index,label,mid\n0,a,\n")
    elif broken == "out_of_order":
        labels.write_text("index,label,mid\n1,a,\n0,b,\n")
    elif broken == "link_outside":  # a file outside the preset: its content is never shown
        outside = tmp_path / "private.txt"
        outside.write_text(f"{SECRET}\n{SECRET},{SECRET}\n")
        labels.unlink()
        labels.symlink_to(outside)
    message = _refusal(preset, "labels.csv")
    assert SECRET not in message


@pytest.mark.one_backend
def test_a_recorded_checksum_is_shown_only_when_it_is_one(preset):
    """metadata.json's `weights_sha256` is quoted only when it is a SHA-256."""
    metadata = preset / "metadata.json"
    data = json.loads(metadata.read_text())
    data["weights_sha256"] = SECRET
    metadata.write_text(json.dumps(data))
    message = _refusal(preset, "model.weights.h5")
    assert SECRET[:8] not in message and "records no SHA-256" in message


@pytest.mark.one_backend
@pytest.mark.parametrize(("label", "shown"), [
    ("Dog", "Dog"),
    ("Café_bar", "Café bar"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("a\rb\nc\td", "a\\rb\\nc\\td"),
    ("\x07bell\x7f", "\\x07bell\\x7f"),
    ("evil\u202etxt", "evil\\u202etxt"),  # right-to-left override
    ("line\u2028sep", "line\\u2028sep"),
])
def test_labels_are_printed_with_control_characters_escaped(label, shown):
    assert display_label(label) == shown
    assert printable(label).isprintable()


@pytest.mark.one_backend
def test_the_cli_prints_hostile_labels_escaped(preset, capsys):
    from keras_dae.cli import main
    from keras_dae.data import bundled_clip_path

    rows = ["index,label,mid"] + [f"{i},class_{i}," for i in range(10)]
    rows[1] = '0,"\x1b[2J\x1b[31mred\x07",'
    (preset / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(["predict", str(bundled_clip_path()), "--model", str(preset),
                 "--top-k", "10"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b[31mred\\x07" in out


def _run(script: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)


# A module made unimportable, as on an install without the extra that brings it.
EXPORT_MISSING = [
    ("onnx", "tf2onnx", "none"), ("onnx", "onnxruntime", "none"), ("onnx", "onnx", "none"),
    ("tflite", "ai_edge_litert", "none"), ("tflite", "ai_edge_quantizer", "float16"),
    ("savedmodel", "tensorflow", "none"),
]


@pytest.mark.one_backend
@pytest.mark.parametrize(("fmt", "module", "quantize"), EXPORT_MISSING)
def test_export_without_its_packages_names_the_extra(fmt, module, quantize, tmp_path):
    """`keras-dae export` says which extra to install, in one line, before Keras loads."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from keras_dae.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "assert 'keras' not in sys.modules, 'Keras was loaded first'\n"
              "sys.exit(code)")
    proc = _run(script, "export", "--model", "diverse_tiny", "--format", fmt, "--quantize",
                quantize, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert module in proc.stderr and 'pip install "keras-dae[export]"' in proc.stderr
    assert "internal error" not in proc.stderr


def _export_error_without(module: str, call: str, error_type: str):
    """Runs `call` of `keras_dae.export` in a fresh interpreter where `module` cannot be
    imported, printing the `error_type` it raises."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from keras_dae import export\n"
              "try:\n"
              f"    {call}\n"
              f"except {error_type} as error:\n"
              "    print(error)\n")
    return _run(script, env={"KERAS_BACKEND": keras.backend.backend()})


@pytest.mark.one_backend
def test_export_api_without_its_packages_names_the_extra(tmp_path):
    proc = _export_error_without("onnxruntime", f"export.export(None, {str(tmp_path / 'm.onnx')!r}, 'onnx')",
                                 "export.ExportError")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ('export to onnx needs onnxruntime, not installed: '
                           'pip install "keras-dae[export]"\n')


@pytest.mark.one_backend
@pytest.mark.parametrize(("artifact", "module"), [("m.onnx", "onnx"), ("m.tflite", "ai_edge_litert")])
def test_running_an_export_without_its_runtime_names_the_extra(artifact, module, tmp_path):
    (tmp_path / artifact).write_bytes(b"not read: the runtime is missing first")
    proc = _export_error_without(module, f"export.load_exported({str(tmp_path / artifact)!r})",
                                 "ModuleNotFoundError")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"{tmp_path / artifact}: {module} is not installed: "
                           'pip install "keras-dae[export]"\n')


@pytest.mark.one_backend
@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_the_api_without_its_backend_names_the_extra(backend):
    script = (f"import sys; sys.modules[{backend!r}] = None\n"
              "import keras_dae\n"
              "try:\n"
              "    keras_dae.zoo\n"
              "except ModuleNotFoundError as error:\n"
              "    print(error)\n")
    proc = _run(script, env={"KERAS_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f'{backend} is not installed: pip install "keras-dae[{backend}]" '
                           "(or choose an installed Keras backend with KERAS_BACKEND)\n")


NATIVE_NOISE = ("cuInit", "Could not find cuda drivers", "oneDNN", "cpu_feature_guard",
                "absl::InitializeLog", "This TensorFlow binary is optimized")


@pytest.mark.one_backend
def test_a_normal_run_prints_no_native_log_noise(tmp_path):
    """TensorFlow's CUDA probes and notices stay hidden unless --debug is given."""
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-m", "keras_dae.cli", "frontends", "--plot", ""],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not [noise for noise in NATIVE_NOISE if noise in proc.stderr], proc.stderr


@pytest.mark.one_backend
@pytest.mark.parametrize(("module", "extra"), [
    ("onnxruntime", "export"), ("ai_edge_litert.interpreter", "export"), ("grain", "shards"),
    ("matplotlib.pyplot", "plot"),
])
def test_a_command_missing_an_optional_package_names_its_extra(module, extra, capsys):
    """Wherever a command imports an optional package, its absence is one line, exit 2."""
    from keras_dae.messages import run_guarded

    def command(args):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    assert run_guarded(command, None) == 2
    top = module.split(".")[0]
    assert capsys.readouterr().err == (f'error: {top} is not installed: pip install '
                                       f'"keras-dae[{extra}]"\n')


@pytest.mark.one_backend
@pytest.mark.parametrize("raised", [
    InputError("Could not locate class 'X'. Make sure it is registered. Full object config: "
               + repr({"config": {f"layer_{i}": list(range(50)) for i in range(200)}})),
    TypeError("<class 'Model'> could not be deserialized properly.\n\nconfig="
              + "{'a': 1}" * 5000),
    InputError("bad\x1b[2J\x1b[31m name\r\nsecond line"),
    InputError("x" * 5000),
    ValueError("operands could not be broadcast together " + "x" * 5000),
    FileNotFoundError(2, "No such file or directory", "dir/\x1b]0;title\x07.wav"),
])
def test_every_cli_refusal_is_one_short_printable_line(raised, capsys):
    """Refusals (keras-dae's InputError, OSError) exit with 2; anything else, a ValueError of
    NumPy's included, is a bug and exits with 1; either way one short printable line."""
    from keras_dae.messages import run_guarded

    def command(args):
        raise raised

    bug = type(raised) in (TypeError, ValueError)
    assert run_guarded(command, None) == (1 if bug else 2)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) <= LONGEST_LINE * 2
    assert err[:-1].isprintable() and "config" not in err.lower()
