"""The encoder as an ONNX graph, the way out of TorchServe: uint8 images in, l2-normalised
embeddings out, preprocessing included, with a dynamic batch axis. ONNX Runtime runs it,
and Triton Inference Server serves it with its ONNX backend: `triton_repository` lays it out
as a Triton model repository (docs/guide.md, "Serving without TorchServe")."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mec_core.augment import Normalization, preprocess
from mec_core.models import load_model

OPSET = 18


class EmbeddingGraph(nn.Module):
    """uint8 (N, C, S, S) at the model's image size -> float32 (N, D) unit vectors."""

    def __init__(self, net: nn.Module, norm: Normalization) -> None:
        super().__init__()
        self.net, self.norm = net, norm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(preprocess(images, self.norm)).float(), dim=1)


def export_onnx(checkpoint_path: str | Path, path: str | Path,
                projector: bool = False) -> Path:
    """Write the checkpoint's student encoder (its backbone, or with `projector` the
    projector's outputs) to `path` as ONNX; input 'images', output 'embeddings'."""
    loaded = load_model(checkpoint_path)
    norm = Normalization.from_dict(loaded.checkpoint["normalization"])
    encoder = loaded.model.encoder.float().eval()
    graph = EmbeddingGraph(encoder if projector else encoder.backbone, norm).eval()
    example = torch.zeros(2, norm.channels, norm.image_size, norm.image_size,
                          dtype=torch.uint8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.onnx")
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(partial), input_names=["images"],
                          output_names=["embeddings"], opset_version=OPSET,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch", max=4096)}},
                          dynamo=True, external_data=False)
    partial.replace(out)
    return out


TRITON_CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [{{ name: "images", data_type: TYPE_UINT8, dims: [ {channels}, {size}, {size} ] }}]
output [{{ name: "embeddings", data_type: TYPE_FP32, dims: [ {dim} ] }}]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""


def triton_repository(checkpoint_path: str | Path, root: str | Path, name: str = "mec",
                      projector: bool = False, max_batch: int = 256) -> Path:
    """`root/name/1/model.onnx` and `root/name/config.pbtxt`: a Triton model repository
    (ONNX Runtime backend, dynamic batching) serving the embeddings."""
    model_dir = Path(root) / name
    onnx_path = export_onnx(checkpoint_path, model_dir / "1" / "model.onnx", projector)
    import onnx  # a dependency of torch's ONNX exporter

    graph = onnx.load(str(onnx_path)).graph
    _, channels, size, _ = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim)
    dim = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    (model_dir / "config.pbtxt").write_text(TRITON_CONFIG.format(
        name=name, max_batch=max_batch, channels=channels, size=size, dim=dim))
    return model_dir
