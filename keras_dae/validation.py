"""Bad input to keras-dae, and the ranges numeric settings must fall in.

`InputError` (a `ValueError`) is what keras-dae raises when what it is given is wrong: a
setting out of range, an array of the wrong shape, a dataset file that does not parse. The
command line turns it into one line and exit status 2; a `ValueError` from elsewhere (NumPy,
Keras) is a bug, exit status 1.

`check(name, value, rule)` refuses a value of the Python API (`TrainConfig`, the loaders)
with an `InputError` naming the setting; the argparse types below (`positive_int`, ...) refuse
the same values on the command line, when they are parsed, naming the flag. NaN and the
infinities are never in range. Imports no Keras.
"""

from __future__ import annotations

import argparse
import math
import numbers


class InputError(ValueError):
    """keras-dae refuses what it was given; the message says what and why, in one line."""


# rule -> (kind, test, what the value must be)
RULES = {
    "positive_int": (int, lambda v: v >= 1, "a whole number >= 1"),
    "non_negative_int": (int, lambda v: v >= 0, "a whole number >= 0"),
    "positive_float": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "non_negative_float": (float, lambda v: math.isfinite(v) and v >= 0,
                           "a finite number >= 0"),
    "unit_interval": (float, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "fraction": (float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)"),
}


def _in_range(value, rule: str) -> bool:
    kind, test, _ = RULES[rule]
    if isinstance(value, bool):
        return False
    if kind is int and not isinstance(value, numbers.Integral):
        return False
    if kind is float and not isinstance(value, numbers.Real):
        return False
    return bool(test(value))


def check(name: str, value, rule: str):
    """Returns `value`, or raises `InputError("<name> must be <range>, got <value>")`."""
    if not _in_range(value, rule):
        raise InputError(f"{name} must be {RULES[rule][2]}, got {value!r}")
    return value


def _argparse_type(rule: str):
    kind, _, wanted = RULES[rule]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not _in_range(value, rule):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


positive_int = _argparse_type("positive_int")
non_negative_int = _argparse_type("non_negative_int")
positive_float = _argparse_type("positive_float")
non_negative_float = _argparse_type("non_negative_float")
unit_interval = _argparse_type("unit_interval")
fraction = _argparse_type("fraction")
