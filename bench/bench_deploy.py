"""A deploy's time with a full reference set, phase by phase, against the bare model: how
long `serving.package.package` (what a deploy job runs before registering) takes for the
60,000 training images of Fashion-MNIST, and whether its embedding runs at the model's own
speed (`Embedder.embed` on the same images, in the same process, just before).

    python bench/bench_deploy.py [--dataset fashion-mnist] [--limit N] [--after-evaluation]
        [--json]
    python bench/bench_deploy.py --report docs/performance/deploy/*.json

The model is the platform's default encoder for the dataset, after one training step (its
speed does not depend on its weights). Phases, from the deploy's own progress reports:
"before" (export and loading the images, up to the first progress report, so the first
batch too), "embed" (first to last progress report, scaled to every image: the first batch
counted again; with the reports' count: the deploy job's progress), "after" (the
reference pixels kept, the index built, the two archives written).

--after-evaluation: also a kNN evaluation of the model on the same training images (100
test images), which keeps its features as the platform's evaluation job does, then the
same deploy again reusing them ("deploy_reusing"); "keep" is what keeping cost the
evaluation (the fingerprint and the features' file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from records import add_options, emit, host, reported

from mec_core.config import TrainConfig
from mec_core.data import load_dataset
from mec_core.evaluate import evaluate
from mec_core.export import export
from mec_core.kept_features import Kept
from mec_core.train import Callbacks, train
from serving.embedder import Embedder
from serving.package import package


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mec-bench-deploy-"))
    config = TrainConfig(dataset=args.dataset, max_steps=1, epochs=1, warmup_epochs=0.1,
                         lambda_warmup_epochs=0.1, train_limit=512)
    checkpoint = train(config, root / "run", Callbacks(), resume=False).checkpoint
    export(checkpoint, root / "export")
    embedder = Embedder(root / "export")
    images = load_dataset(args.dataset, "train", None, embedder.norm.image_size
                          ).head(args.limit).images
    start = time.perf_counter()
    embedder.embed(images)
    bare = time.perf_counter() - start

    reports: list[tuple[float, int]] = []
    start = time.perf_counter()
    package(checkpoint, root / "store", "bench", "1.0", reference_limit=args.limit,
            reference_images=root / "images.npy",
            on_progress=lambda done, total: reports.append((time.perf_counter(), done)))
    total = time.perf_counter() - start
    first, last = reports[0][0], reports[-1][0]
    embed = last - first  # the first report comes after the first batch: add it back
    embed *= len(images) / max(1, len(images) - reports[0][1])
    reusing = _after_evaluation(args, checkpoint, root) if args.after_evaluation else {}
    return {"bench": "deploy", "when": time.strftime("%Y-%m-%d %H:%M"), "host": host(),
            "torch_threads": torch.get_num_threads(), "precision": "float32",
            "command": f"python bench/bench_deploy.py --dataset {args.dataset}"
                       + (f" --limit {args.limit}" if args.limit else "")
                       + (" --after-evaluation" if args.after_evaluation else ""),
            "dataset": args.dataset, "images": len(images), "backbone": config.backbone,
            "image_size": embedder.norm.image_size,
            "seconds": {"deploy": round(total, 1), "before": round(first - start, 1),
                        "embed": round(embed, 1), "after": round(start + total - last, 1),
                        "bare_model": round(bare, 1)} | reusing,
            "progress_reports": len(reports),
            "embed_over_bare": round(embed / bare, 3)}


def _after_evaluation(args: argparse.Namespace, checkpoint: Path, root: Path) -> dict:
    """Seconds of the evaluation, of its keeping the features, and of the deploy reusing
    them."""
    kept, keeping = [], []

    def keep(digest: str, features: torch.Tensor) -> None:
        start = time.perf_counter()
        Kept(digest, features.numpy(), job_id=1).save(root / "kept.npz")
        keeping.append(time.perf_counter() - start)
        kept.append(Kept.read(root / "kept.npz"))

    start = time.perf_counter()
    evaluate("knn", args.dataset, checkpoint_path=str(checkpoint), train_limit=args.limit,
             test_limit=100, on_train_features=keep)
    evaluation = time.perf_counter() - start
    start = time.perf_counter()
    packaged = package(checkpoint, root / "store", "bench", "1.0", reference_limit=args.limit,
                       reference_images=root / "images.npy",
                       kept=lambda digest: kept[0] if digest == kept[0].fingerprint else None)
    if packaged.reused_from != 1:
        raise RuntimeError("the deploy did not reuse the evaluation's features")
    return {"evaluation": round(evaluation, 1), "keep": round(keeping[0], 1),
            "deploy_reusing": round(time.perf_counter() - start, 1)}


def markdown(r: dict) -> str:
    s = r["seconds"]
    return (f"{r['images']:,} images of {r['dataset']} ({r['backbone']}, {r['image_size']} px, "
            f"{r['precision']}, {r['torch_threads']} torch threads), {r['when']} "
            f"({r['host']['cpu']}, {r['host']['cores']} cores, "
            f"{'/'.join(r['host']['flags'])}):\n\n"
            "| deploy, in all | before (export, images; also the first batch) | embed | "
            "after (pixels, index, archives) | the bare model on the same images | "
            "embed / bare | progress reports |\n|---|---|---|---|---|---|---|\n"
            f"| {s['deploy']} s | {s['before']} s | {s['embed']} s | {s['after']} s | "
            f"{s['bare_model']} s | {r['embed_over_bare']:.2f} | {r['progress_reports']} |"
            + ("" if "deploy_reusing" not in s else
               "\n\n| kNN evaluation on the same images (100 test) | its keeping the features "
               "| the deploy reusing them | deploy / deploy reusing |\n|---|---|---|---|\n"
               f"| {s['evaluation']} s | {s['keep']} s | {s['deploy_reusing']} s | "
               f"{s['deploy'] / s['deploy_reusing']:.1f} |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--limit", type=int, default=None, help="first N training images")
    parser.add_argument("--after-evaluation", action="store_true",
                        help="also the deploy that reuses an evaluation's features")
    add_options(parser)
    args = parser.parse_args()
    if not reported(args, markdown):
        emit(args, run(args), markdown)


if __name__ == "__main__":
    main()
