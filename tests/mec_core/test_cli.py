"""The `mec` command line, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

TINY = ["--dataset", "synthetic", "--backbone", "convnet", "--batch-size", "16",
        "--max-steps", "3", "--proj-dim", "32", "--pred-hidden-dim", "16", "--train-limit", "64"]


def mec(*args, ok=True):
    done = subprocess.run([sys.executable, "-m", "mec_core.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if ok:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_cli__train_eval_export(tmp_path):
    out = tmp_path / "run"
    summary = json.loads(mec("train", *TINY, "--out", str(out)).stdout)
    assert summary["steps"] == 3 and summary["checkpoint"].endswith("step_00000003.pt")
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    knn = json.loads(mec("eval", "knn", "--checkpoint", summary["checkpoint"],
                         "--dataset", "synthetic", "--k", "20").stdout)
    assert 0.0 <= knn["top1"] <= 100.0 and knn["encoder"] == "convnet @ step 3"
    linear = json.loads(mec("eval", "linear", "--random-init", "--backbone", "convnet",
                            "--dataset", "synthetic", "--steps", "5").stdout)
    assert linear["encoder"] == "convnet (random init)" and "top5" in linear

    paths = json.loads(mec("export", "--checkpoint", summary["checkpoint"],
                           "--out", str(tmp_path / "export")).stdout)
    meta = json.loads(Path(paths["meta"]).read_text())
    assert meta["backbone"] == "convnet" and meta["normalization"]["image_size"] == 32
    backbone = torch.load(paths["backbone"], weights_only=True)
    assert "0.weight" in backbone


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_cli__baseline_methods_train_and_evaluate(tmp_path, method):
    out = tmp_path / method
    summary = json.loads(mec("train", *TINY, "--method", method, "--out", str(out)).stdout)
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["recipe"] == "small"
    assert summary["steps"] == 3 and "coding_length" not in summary
    knn = json.loads(mec("eval", "knn", "--checkpoint", summary["checkpoint"],
                         "--dataset", "synthetic", "--k", "20").stdout)
    assert 0.0 <= knn["top1"] <= 100.0
    refused = mec("train", *TINY, "--method", "moco", "--out", str(out), ok=False)
    assert refused.returncode == 2 and "'moco' is not one of" in refused.stderr


def test_cli__exported_resnet_loads_into_torchvision(tmp_path):
    mec("train", *TINY, "--backbone", "resnet18", "--no-small-stem", "--max-steps", "1",
        "--out", str(tmp_path))
    mec("export", "--checkpoint", str(tmp_path / "checkpoints" / "step_00000001.pt"),
        "--out", str(tmp_path / "export"))
    state = torch.load(tmp_path / "export" / "backbone.pt", weights_only=True)
    result = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("args,message", [
    (["train", "--batch-size", "1", "--out", "x"], "--batch-size: Input should be greater"),
    (["train", "--eps-sq", "nan", "--out", "x"], "--eps-sq"),
    (["train", "--device", "tpu", "--out", "x"], "--device"),
    (["train", "--dataset", "imagenet", "--out", "x"], "'imagenet' is not one of"),
    (["eval", "knn", "--random-init", "--dataset", "digits"], "--random-init and --backbone"),
    (["eval", "knn", "--dataset", "digits"], "exactly one of"),
    (["eval", "knn", "--checkpoint", "/nonexistent.pt", "--dataset", "digits"],
     "/nonexistent.pt does not exist"),
    (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent", "--out", "{tmp}"],
     "no such directory /nonexistent"),
    (["train", "--dataset", "digits", "--data-dir", "{tmp}", "--out", "{tmp}"],
     "dataset 'digits' reads no directory (scikit-learn bundles it)"),
    (["eval", "knn", "--raw-pixels", "--dataset", "synthetic", "--data-dir", "{tmp}"],
     "dataset 'synthetic' reads no directory (it is generated)"),
])
def test_cli__bad_input_gets_a_clear_message(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = mec(*args, ok=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli__every_option_has_help():
    text = mec("train", "--help").stdout
    for option in ("--eps-sq", "--order", "--teacher-momentum", "--lambda-warmup-factor",
                   "--batch-size", "--out", "--resume"):
        assert option in text
    assert "[default: 64.0]" in text


def test_cli__order_none_selects_the_exact_log_det(tmp_path):
    """`none` is null for a number, and a choice where a field has one of that name."""
    mec("train", *TINY, "--max-steps", "1", "--order", "none", "--teacher", "none",
        "--out", str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["order"] is None and config["teacher"] == "none"
    done = mec("train", *TINY, "--order", "four", "--out", str(tmp_path / "b"), ok=False)
    assert done.returncode != 0 and "'four' is not an integer or 'none'" in done.stderr
