"""Argument parsing shared by the ``invsolve`` subcommands: checked numeric types, KEY=VALUE pairs,
and the parser class whose usage errors are one line (exit status 2)."""

from __future__ import annotations

import argparse
import json
import math


def bounded(kind=int, low=None, high=None, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type=``: parse an int or a finite float and check ``low <= value <= high``
    (``<`` with ``low_open`` / ``high_open``); argparse names the flag in the error."""
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    else:
        rule = f"{'<' if high_open else '<='} {high:g}" if high is not None else ""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


class CommandParser(argparse.ArgumentParser):
    """The ``invsolve`` parser and its subcommands' (argparse makes subparsers of the same class):
    every one takes ``--debug``, and a usage error is one line on stderr, exit status 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand that is not given --debug leaves the top-level value alone
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error instead of one line")

    def error(self, message):
        self.exit(2, f"invsolve: error: {message} (see {self.prog} --help)\n")


def key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"give KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
