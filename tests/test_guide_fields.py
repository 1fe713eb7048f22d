"""docs/guide.md's tables of a job's and a deploy's fields list every field the API takes,
so a field added to a spec without a line in the guide fails here."""

from pathlib import Path

import pytest

from mec_core.config import TrainConfig
from mec_platform.specs import DeploySpec, EvaluateSpec

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


@pytest.mark.parametrize("spec", [TrainConfig, EvaluateSpec, DeploySpec])
def test_the_guide_has_a_row_for_every_field(spec):
    text = GUIDE.read_text()
    assert [name for name in spec.model_fields if f"\n| `{name}` |" not in text] == []
