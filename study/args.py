"""The public argument types of `python -m study ...` and `UsageError`: one place for the CLI and the bench.

Every bad argument is reported as one line on stderr with exit status 2 (`study.cli.main`).
"""
from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; the contract wants one line
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def non_negative_seconds(value) -> float:
    """A finite number >= 0 (0: off, or one attempt): the rule of --tracking-retry-seconds (and
    $STUDY_TRACKING_RETRY_SECONDS), --checkpoint-minutes and a grid's `checkpoint_minutes`.  Text is
    read as a number; a bool is none.  ValueError otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"expected a finite number of seconds >= 0, got {value!r}")
    return number


def seconds(text: str) -> float:
    try:
        return non_negative_seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def minutes(text: str) -> float:
    try:
        return non_negative_seconds(text)  # the same rule as seconds: a finite number >= 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number of minutes >= 0, got {text!r}") from None


def key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def data_root(value: str | None) -> str:
    """`value` or $STUDY_DATA_ROOT, once it is found to hold CIFAR-10 (else a `UsageError`)."""
    from study.data.cifar import DataError, default_root, locate

    root = value or default_root()
    try:
        locate(root)
    except DataError as e:
        raise UsageError(str(e)) from None
    return root
