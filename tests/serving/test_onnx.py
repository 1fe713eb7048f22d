"""`mec export --format onnx`: the ONNX graph (run by ONNX Runtime) gives the embeddings of
the eager encoder that TorchServe serves, within 1e-4, at any batch size."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mec_core.data import synthetic
from mec_core.export import export
from mec_core.onnx_export import export_onnx
from serving.embedder import Embedder


def _parity(checkpoint, export_dir, onnx_path, images: torch.Tensor) -> float:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    eager = Embedder(export_dir)
    worst = 0.0
    for n in (1, 5, 17):
        (got,) = session.run(["embeddings"], {"images": images[:n].numpy()})
        expected = eager.embed(images[:n]).numpy()
        assert got.shape == expected.shape == (n, expected.shape[1])
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def test_onnx__equals_the_eager_encoder_convnet(trained, tmp_path):
    checkpoint, export_dir, _ = trained
    path = export_onnx(checkpoint, tmp_path / "enc.onnx")
    assert _parity(checkpoint, export_dir, path, synthetic("test", n=17).images) < 1e-4


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    root = tmp_path_factory.mktemp("r18")
    subprocess.run([sys.executable, "-m", "mec_core.cli", "train", "--dataset", "synthetic",
                    "--backbone", "resnet18", "--image-size", "32", "--batch-size", "16",
                    "--max-steps", "1", "--train-limit", "32", "--proj-dim", "64",
                    "--out", str(root / "run")], check=True, capture_output=True)
    return root / "run" / "checkpoints" / "step_00000001.pt"


def test_onnx__equals_the_eager_encoder_resnet18_and_the_cli_writes_a_triton_repository(
        resnet18, tmp_path):
    export(resnet18, tmp_path / "export")
    done = subprocess.run([sys.executable, "-m", "mec_core.cli", "export", "--checkpoint",
                           str(resnet18), "--out", str(tmp_path / "repo"), "--format", "onnx",
                           "--name", "shoes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    assert paths["onnx"].endswith("shoes/1/model.onnx")
    images = synthetic("test", n=17).images
    assert _parity(resnet18, tmp_path / "export", paths["onnx"], images) < 1e-4
    config = (tmp_path / "repo" / "shoes" / "config.pbtxt").read_text()
    dim = Embedder(tmp_path / "export").embed(images[:1]).shape[1]
    assert 'backend: "onnxruntime"' in config and f"dims: [ {dim} ]" in config
    assert "dims: [ 3, 32, 32 ]" in config and "TYPE_UINT8" in config


def test_onnx__a_missing_checkpoint_is_a_clear_cli_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mec_core.cli", "export", "--checkpoint",
                           str(tmp_path / "nope.pt"), "--out", str(tmp_path / "repo"),
                           "--format", "onnx"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "nope.pt" in done.stderr
