"""The recorded-run convention of the benchmarks: `--json` prints the run's record (kept
under docs/), `--report FILE…` prints the docs' tables from records and runs nothing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


# torch's and oneDNN's own switches that keep them to older instructions than the CPU has
# (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: an AVX2-only CPU's kernels)
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def host() -> dict:
    """The CPU a figure was measured on: its model name, cores, family/model numbers (one
    name such as "Intel(R) Xeon(R) Processor" covers several generations), the flags that
    decide its speed and precision (bf16 is native with avx512_bf16 or amx_bf16, else
    emulated), and the instruction sets torch was kept to, if it was (`limited_to`)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.M)
    number = re.search(r"^model\s*:\s*(\d+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    limits = {name: os.environ[name] for name in ISA_LIMITS if name in os.environ}
    return {"cpu": model.group(1) if model else platform.processor(), "cores": os.cpu_count(),
            "family_model": f"{family.group(1)}/{number.group(1)}" if family and number else None,
            "flags": sorted(set(flags.group(1).split() if flags else ())
                            & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})} | (
        {"limited_to": limits} if limits else {})

