"""The exported encoder as the serving workers load it."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mec_core.augment import preprocess
from mec_core.config import stored_config
from mec_core.data import synthetic
from mec_core.models import MECModel
from serving.embedder import Embedder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the process's mappings in /proc")


def _mappings(path: Path) -> list[dict]:
    """This process's mappings of `path`: their address range and smaps counters (kB)."""
    out, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            current = {"start": start, "end": end} if fields[-1] == str(path) else None
            if current is not None:
                out.append(current)
        elif current is not None and fields[0].endswith(":") and len(fields) == 3:
            current[fields[0][:-1]] = int(fields[1])
    return out


def test_embedder__weights_are_the_files_pages_unwritten_so_workers_share_one_copy(trained):
    _, export_dir, _ = trained
    embedder = Embedder(export_dir)
    images = synthetic("test", n=4).images
    got = embedder.embed(images)
    mapped = _mappings((export_dir / "encoder.pt").resolve())
    params = list(embedder.net.parameters())
    assert mapped and params
    for p in params:
        assert any(m["start"] <= p.data_ptr() < m["end"] for m in mapped), \
            "a weight was copied out of the export's file"
    # a forward wrote none of those pages: no process holds a private copy
    assert sum(m["Private_Dirty"] for m in mapped) == 0
    # the same embeddings as from weights copied into the model the usual way
    meta = json.loads((export_dir / "model.json").read_text())
    model = MECModel.from_config(stored_config(meta["config"]))
    model.encoder.load_state_dict(torch.load(export_dir / "encoder.pt", weights_only=True))
    with torch.inference_mode():
        x = preprocess(images, embedder.norm)
        assert torch.equal(F.normalize(model.encoder.backbone.eval()(x).float(), dim=1), got)
