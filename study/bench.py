"""Benchmarks (filled in below)."""


def add_arguments(parser):
    parser.add_argument("--json", action="store_true")


def run(a):
    raise NotImplementedError
