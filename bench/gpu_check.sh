#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py says what it runs): one command, under 10 minutes on
# one GPU; a dry run where there is none. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
