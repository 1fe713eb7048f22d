"""Our TorchServe handler in this process, with TorchServe's own Context: a batch of one
request computes with every core (MEC_TORCH_THREADS_ALONE), larger batches with the
worker's share (MEC_TORCH_THREADS), and the answers do not depend on it."""

import zipfile

import numpy as np
import torch
from PIL import Image
from ts.context import Context

from serving.handler import MECHandler


def _png(seed: int, path) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def test_a_lone_request_gets_every_core_and_a_batch_the_workers_share(trained, tmp_path,
                                                                      monkeypatch):
    _, _, store = trained
    with zipfile.ZipFile(store / "tiny.mar") as archive:
        archive.extractall(tmp_path / "model")
    monkeypatch.setenv("MEC_TORCH_THREADS", "1")
    monkeypatch.setenv("MEC_TORCH_THREADS_ALONE", "2")
    before = torch.get_num_threads()
    handler = MECHandler()
    handler.context = Context("tiny", str(tmp_path / "model"), {}, 8, None, "0.12.0")
    try:
        handler.initialize(handler.context)
        image = _png(1, tmp_path / "a.png")
        alone = handler.inference(handler.preprocess([{"body": image}]))
        assert torch.get_num_threads() == 2
        batch = handler.inference(handler.preprocess([{"body": image}, {"body": image}]))
        assert torch.get_num_threads() == 1
        handler.inference(handler.preprocess([{"body": image}]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    vectors = [np.asarray(answer["embeddings"]) for answer in alone + batch]
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-4 and np.array_equal(vectors[1],
                                                                             vectors[2])
