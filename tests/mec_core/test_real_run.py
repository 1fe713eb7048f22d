"""A short real pretraining run must learn something: kNN top-1 clearly above random init."""

from mec_core.config import TrainConfig
from mec_core.evaluate import evaluate
from mec_core.train import train


def test_real_run__digits_knn_beats_the_same_backbone_at_random_init(tmp_path):
    config = TrainConfig(dataset="digits", backbone="convnet", epochs=30, batch_size=128,
                         proj_dim=256, warmup_epochs=2, lambda_warmup_epochs=2)
    result = train(config, tmp_path)
    trained = evaluate("knn", "digits", checkpoint_path=str(result.checkpoint))
    baseline = evaluate("knn", "digits", backbone="convnet")
    assert trained["top1"] > baseline["top1"] + 3.0, (trained, baseline)
