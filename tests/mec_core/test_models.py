"""Encoders: contract tests over every registered backbone, the EMA teacher, export."""

import dataclasses

import pytest
import torch
import torchvision

from mec_core.augment import Normalization
from mec_core.checkpoint import Checkpointer
from mec_core.config import BACKBONES, TrainConfig
from mec_core.models import MECModel, build_backbone, ema_update, load_model


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("small_stem", [True, False])
def test_backbone__shape_finite_and_every_parameter_gets_a_gradient(name, small_stem):
    torch.manual_seed(0)
    net, features = build_backbone(name, small_stem)
    size = 32 if small_stem else 64
    out = net(torch.randn(4, 3, size, size))
    assert out.shape == (4, features)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbone__weights_load_into_torchvision(name):
    net, _ = build_backbone(name, small_stem=False)
    reference = getattr(torchvision.models, name)(weights=None)
    result = reference.load_state_dict(net.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert not result.unexpected_keys


@pytest.mark.parametrize("name,channels", [("convnet", 256), ("resnet18", 512)])
def test_backbone__feature_grid_keeps_the_coarse_layout(name, channels):
    """Grid g: the last map average-pooled to g x g and flattened, channel-major; grid 1
    is the global average of the grid-2 features' four cells."""
    torch.manual_seed(0)
    net, features = build_backbone(name, small_stem=True, grid=2)
    assert features == 4 * channels
    x = torch.randn(3, 3, 28, 28)
    cells = net.eval()(x).view(3, channels, 4)
    pooled, _ = build_backbone(name, small_stem=True, grid=1)
    pooled.load_state_dict(net.state_dict())  # the grid adds no parameter
    torch.testing.assert_close(pooled.eval()(x), cells.mean(2), atol=1e-5, rtol=1e-4)


def test_backbone__unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        build_backbone("vit")


def _model(**kw):
    torch.manual_seed(0)
    args = dict(backbone="convnet", proj_dim=32, proj_hidden_dim=64, pred_hidden_dim=16)
    return MECModel(**(args | kw))


def test_mec_model__outputs_and_gradients_reach_the_student_only():
    model = _model()
    s1, s2, t1, t2 = model(torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16))
    assert all(t.shape == (6, 32) for t in (s1, s2, t1, t2))
    assert not t1.requires_grad and not t2.requires_grad
    (s1.sum() + s2.sum()).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_mec_model__ablations_of_table5():
    shared = _model(teacher="stop_grad")
    assert shared.teacher is None
    x = torch.randn(4, 3, 16, 16)
    shared.eval()
    _, _, t1, _ = shared(x, x)
    assert torch.allclose(t1, shared.encoder(x))  # the teacher is the student encoder
    assert not t1.requires_grad
    with pytest.raises(ValueError, match="teacher must be"):
        _model(teacher="momentum")
    symmetric = _model(use_predictor=False)
    assert isinstance(symmetric.predictor, torch.nn.Identity)


def test_ema_update__is_the_momentum_average():
    model = _model()
    for p in model.encoder.parameters():
        p.data.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    ema_update(model.teacher, model.encoder, 0.9)
    for old, new, student in zip(before, model.teacher.parameters(),
                                 model.encoder.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * student)
    ema_update(model.teacher, model.encoder, 0.0)
    for new, student in zip(model.teacher.parameters(), model.encoder.parameters()):
        assert torch.equal(new, student)


def test_load_model__restores_a_checkpoint_and_refuses_another_format(tmp_path):
    config = TrainConfig(dataset="synthetic", backbone="convnet", proj_dim=16,
                         pred_hidden_dim=8)
    model = MECModel.from_config(config)
    for p in model.parameters():
        p.data.normal_()
    norm = Normalization(32, 3, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    checkpointer = Checkpointer(tmp_path, keep=2)
    path = checkpointer.save({"config": config.model_dump(mode="json"),
                              "model": model.state_dict(),
                              "normalization": dataclasses.asdict(norm)}, step=7)
    loaded = load_model(path)
    assert loaded.step == 7 and loaded.config == config and loaded.normalization == norm
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    other = tmp_path / "other.pt"
    torch.save({**torch.load(path, weights_only=True), "format": "mec-checkpoint/0"}, other)
    with pytest.raises(ValueError, match="format 'mec-checkpoint/0'"):
        load_model(other)
    other.unlink()
    for step in (8, 9):  # only the `keep` newest stay
        checkpointer.save({"config": {}, "model": {}}, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000008.pt",
                                                          "step_00000009.pt"]
