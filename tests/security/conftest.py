"""The attacks of docs/reliability.md's threat list, each on the real API, worker and
TorchServe, on both backends; they reuse the integration tests' harness."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
