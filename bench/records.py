"""The recorded-run convention of the benchmarks: `--json` prints the run's record (kept
under docs/), `--report FILE…` prints the docs' tables from records and runs nothing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the run's JSON record")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of recorded runs and run nothing")


def reported(args: argparse.Namespace, markdown: Callable[[dict], str]) -> bool:
    """Print the tables of `--report`'s records; whether there were any."""
    if args.report:
        print("\n\n".join(markdown(json.loads(p.read_text())) for p in args.report))
    return bool(args.report)


def emit(args: argparse.Namespace, record: dict, markdown: Callable[[dict], str]) -> None:
    print(json.dumps(record) if args.json else markdown(record))
