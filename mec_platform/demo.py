"""`mec demo`: the whole loop through the platform's own interfaces.

Start the stack, pretrain over REST with a live progress bar, evaluate with kNN next to
random init, deploy to TorchServe, embed and retrieve a few test images, summarize, and
stop every process it started (also on Ctrl-C).
"""

from __future__ import annotations

import base64
import io
import json
import signal
import tempfile
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mec_client import APIError, Client, JobStatus
from mec_client.models import JobPublic
from mec_platform.stack import Ports, Stack

# A few minutes on 2 CPU cores with the small convnet; everything else comes from the
# small-image recipe that TrainConfig picks for these datasets. Fashion-MNIST: the whole
# training set for 4 epochs in batches of 128 (batches of 128: the best of the 3-epoch
# variations of docs/science.md, "tune"; 3 epochs fell 0.05 points short of random init
# + 5 once the recipe's 2 x 2 feature grid made random init stronger).
CONFIGS = {
    "fashion-mnist": {"backbone": "convnet", "batch_size": 128, "epochs": 4},
    "digits": {"backbone": "convnet", "batch_size": 128, "epochs": 20},
    "synthetic": {"backbone": "convnet", "proj_dim": 64, "pred_hidden_dim": 32,
                  "batch_size": 64, "epochs": 1, "train_limit": 512},
}


def config_of(dataset: str, **overrides) -> tuple[str, dict]:
    """The dataset of the demo ("auto": fashion-mnist when installed, else digits) and its
    pretraining config, with the `overrides` that are set."""
    from mec_core.data import DEFAULT_DIRS

    if dataset == "auto":
        dataset = "fashion-mnist" if Path(DEFAULT_DIRS["fashion-mnist"]).is_dir() else "digits"
    return dataset, {"dataset": dataset, **CONFIGS[dataset],
                     **{k: v for k, v in overrides.items() if v is not None}}


class DemoFailed(RuntimeError):
    pass


def _png(image) -> bytes:
    array = image.permute(1, 2, 0).squeeze(-1).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _wait(client: Client, job_id: int, bar: Progress | None = None, task=None,
          timeout: float = 3600) -> JobPublic:
    def show(job: JobPublic) -> None:
        if bar is not None and job.progress.total_steps:
            loss = (job.last_metrics or {}).get("loss")
            bar.update(task, total=job.progress.total_steps, completed=job.progress.step,
                       info="" if loss is None else f"loss {loss:.4f}")

    try:
        job = client.wait(job_id, timeout=timeout, poll=0.5, on_progress=show)
    except TimeoutError:
        raise DemoFailed(f"job {job_id} did not finish within {timeout}s") from None
    if job.status != JobStatus.SUCCEEDED:
        raise DemoFailed(f"job {job_id} {job.status}: {job.error}")
    return job


def run(dataset: str, config: dict, data_dir: Path | None, ports: Ports | None,
        console: Console, samples: int = 3) -> dict:
    """Run the loop; returns the summary. Stops the stack whatever happens."""
    from mec_core.data import load_dataset
    from mec_core.evaluate import evaluate

    workdir = data_dir or Path(tempfile.mkdtemp(prefix="mec-demo-"))
    stack = Stack(workdir, ports or Ports.any_free())
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary: dict = {"dataset": dataset, "data_dir": str(workdir)}
    try:
        console.print(f"[1/6] starting API, worker and TorchServe in {workdir}")
        summary["urls"] = stack.up()
        for name, url in summary["urls"].items():
            console.print(f"      {name:<22} {url}")
        key = stack.create_key("demo")
        console.print(f"      API key for this demo: {key[:12]}... (`mec keys create` makes more)")
        client = Client(stack.api_url, key, timeout=60)

        console.print(f"[2/6] MEC pretraining on {dataset}")
        try:
            job = client.submit({"kind": "pretrain", "name": f"demo-{dataset}",
                                 "tags": ["demo"], "config": config})
        except APIError as exc:
            raise DemoFailed(f"submission refused: {exc}") from None
        with Progress(TextColumn("      training"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                      console=console, transient=False) as bar:
            task = bar.add_task("train", total=None, info="")
            done = _wait(client, job.id, bar, task)
        summary["pretrain"] = {"job_id": done.id, "steps": done.progress.step,
                               "images_per_sec": done.result["images_per_sec"],
                               "coding_length": done.result["coding_length"]}

        console.print("[3/6] kNN evaluation (k=200, T=0.1) next to the same backbone at "
                      "random init and to raw pixels")
        knn = _wait(client, client.evaluate(done.id, "knn").id).result
        baseline = evaluate("knn", dataset, backbone=config["backbone"],
                            data_dir=config.get("data_dir"))
        pixels = evaluate("knn", dataset, pixels=True, data_dir=config.get("data_dir"))
        summary["knn_top1"] = {"mec": knn["top1"], "random_init": baseline["top1"],
                               "raw_pixels": pixels["top1"]}
        verdict = "beats" if knn["top1"] > pixels["top1"] else "does not beat"
        console.print(f"      kNN top-1: MEC {knn['top1']:.2f}%  vs  random init "
                      f"{baseline['top1']:.2f}%  and raw pixels {pixels['top1']:.2f}% "
                      f"(this short run {verdict} raw pixels)")

        console.print("[4/6] deploying to TorchServe (embedding + kNN endpoints)")
        model = client.models().data[0]
        _wait(client, client.deploy(model.id, reference_limit=config.get("train_limit")).id)
        deployment = client.model(model.id).deployment
        summary["endpoints"] = deployment["urls"]
        for task_name, url in deployment["urls"].items():
            console.print(f"      {task_name:<6} {url}")

        console.print(f"[5/6] embedding and retrieving {samples} test images through "
                      "TorchServe")
        served = stack.torchserve()
        test = load_dataset(dataset, "test", config.get("data_dir"))
        retrievals = []
        for i in range(samples):
            image = _png(test.images[i])
            emb = served.predict(deployment["name"], image, "image/png")
            query = {"images": [base64.b64encode(image).decode()], "k": 5, "vote": True}
            found = served.predict(f"{deployment['name']}-knn", json.dumps(query).encode(),
                                   "application/json")
            if emb.status_code != 200 or found.status_code != 200:
                raise DemoFailed(f"TorchServe answered {emb.status_code}/{found.status_code}: "
                                 f"{emb.reason} {found.reason}")
            truth = test.classes[int(test.labels[i])]
            answer = found.json()
            retrievals.append({"true": truth, "vote": answer["vote"][0],
                               "dim": emb.json()["dim"],
                               "neighbours": [n["label"] for n in answer["neighbours"][0]]})
            console.print(f"      test #{i}: true {truth!r:>14}  vote {answer['vote'][0]!r:>14}"
                          f"  neighbours {retrievals[-1]['neighbours']}")
        summary["retrievals"] = retrievals
    finally:
        console.print("[6/6] stopping every process the demo started")
        stopped = stack.down()
        summary["stopped"] = stopped
        signal.signal(signal.SIGTERM, previous)
    return summary
