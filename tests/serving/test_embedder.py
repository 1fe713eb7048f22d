"""The exported encoder as the serving workers load it."""

import json
import sys

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


def test_embedder__weights_are_the_files_pages_unwritten_so_workers_share_one_copy(
        trained, file_mappings):
    _, export_dir, _ = trained
    embedder = Embedder(export_dir)
    images = synthetic("test", n=4).images
    got = embedder.embed(images)
    mapped = file_mappings((export_dir / "encoder.pt").resolve())
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
