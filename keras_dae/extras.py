"""Optional dependencies: which extra of keras-dae installs a module, and the one line that
says how to get it when it is missing.

It imports nothing but the standard library, so the command line can consult it before
Keras (and its backend) load.
"""

from __future__ import annotations

import contextlib
import importlib.util

# Top-level module -> the extra (`pip install "keras-dae[EXTRA]"`) that installs it.
EXTRAS = {
    "tensorflow": "tensorflow",
    "jax": "jax",
    "jaxlib": "jax",
    "torch": "torch",
    "tf2onnx": "export",
    "onnx": "export",
    "onnxruntime": "export",
    "ai_edge_litert": "export",
    "ai_edge_quantizer": "export",
    "matplotlib": "plot",
    "grain": "shards",
    "array_record": "shards",
    "ray": "ray",
    "pyarrow": "ray",
}

BACKENDS = ("tensorflow", "jax", "torch")

# What each export format needs, converters and the runtime that checks the result.
EXPORT_MODULES = {
    "savedmodel": ("tensorflow",),
    "tflite": ("tensorflow", "ai_edge_litert"),
    "onnx": ("tensorflow", "tf2onnx", "onnx", "onnxruntime"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def install_hint(modules) -> str:
    """`pip install "keras-dae[export]"` for the extras that install `modules`."""
    extras = sorted({EXTRAS[module.split(".")[0]] for module in modules})
    return f'pip install "keras-dae[{",".join(extras)}]"'


def missing_message(modules, purpose: str, extra: str | None = None) -> str | None:
    """One line saying which of `modules` `purpose` needs and which extra (`extra`, else
    each module's own) installs them, or None when every one is installed."""
    missing = [module for module in modules if not installed(module)]
    if not missing:
        return None
    hint = f'pip install "keras-dae[{extra}]"' if extra else install_hint(missing)
    return f"{purpose} needs {', '.join(missing)}, not installed: {hint}"


def missing_for_export(fmt: str, quantize: str = "none") -> str | None:
    """The line for an export to `fmt` (with TFLite quantization `quantize`) whose packages
    are not all installed, or None. The `export` extra installs them all."""
    modules = EXPORT_MODULES.get(fmt, ("tensorflow",))
    if fmt == "tflite" and quantize not in (None, "none"):
        modules += ("ai_edge_quantizer",)
    return missing_message(modules, f"export to {fmt}", extra="export")


def missing_module_line(error: BaseException) -> str | None:
    """The line for a `ModuleNotFoundError` of an optional dependency, else None."""
    if not isinstance(error, ModuleNotFoundError):
        return None
    module = (error.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    line = f"{module} is not installed: {install_hint([module])}"
    if module in BACKENDS:
        line += " (or choose an installed Keras backend with KERAS_BACKEND)"
    return line


@contextlib.contextmanager
def naming_the_extra(prefix: str = ""):
    """Turns a `ModuleNotFoundError` of an optional dependency raised in the block into one of
    one line (`prefix` + `missing_module_line`); other errors pass unchanged."""
    try:
        yield
    except ModuleNotFoundError as error:
        line = missing_module_line(error)
        if line is None:
            raise
        raise ModuleNotFoundError(prefix + line, name=error.name) from error


def picture_path(requested: str | None, default: str, flag: str = "--plot") -> str | None:
    """Where a command draws its picture, or None for no picture.

    `requested` is None when `flag` was not given: then `default`, if matplotlib is installed
    (else None: `no_picture_line` says which extra draws it); '' means no picture. A picture
    asked for by name without matplotlib, or where it cannot be written
    (`atomic.check_output_path`), is refused (`InputError`) before any work.
    """
    if requested == "":
        return None
    if not installed("matplotlib"):
        if requested is None:
            return None
        from keras_dae.validation import InputError

        raise InputError(f"the picture {requested} needs matplotlib: {install_hint(['matplotlib'])}")
    from keras_dae.atomic import check_output_path

    return str(check_output_path(requested or default, (), flag))


def no_picture_line(requested: str | None) -> str | None:
    """The line saying no picture was drawn for want of matplotlib (`requested` None: the
    flag was not given), else None."""
    if requested is None and not installed("matplotlib"):
        return f"no picture: matplotlib is not installed ({install_hint(['matplotlib'])} draws it)"
    return None
