"""The ``segheads`` command line's arguments: one sub-parser per command (``build_parser``), and the
flags that are shorthands for config keys."""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_FLAGS = {  # CLI flag -> config key
    "backbone": "model.backbone", "classifier": "model.classifier", "neck": "model.neck",
    "dataset": "data.dataset", "iters": "train.iters", "batch_size": "data.batch_size",
    "image_size": "data.image_size", "seed": "train.seed", "device": "device",
    "output_dir": "output_dir", "experiment": "experiment",
}

MEASURE_FLAGS = {  # CLI flag -> config key
    "backbone": "model.backbone", "classifier": "model.classifier", "neck": "model.neck",
    "image_size": "measure.image_size", "batch_sizes": "measure.batch_sizes", "dtype": "measure.dtype",
    "threads": "train.threads", "device": "device",
}

DESCRIPTION = ("Train and measure interchangeable pixel classifier heads over a matrix of segmentation backbones; "
               "`segheads COMMAND --help` tells each command's options.")
NECK_HELP = "registered neck (default mlp; `segheads list necks` names them all, e.g. fpn, upernet, stages)"

PREPARE_LAYOUTS = """layouts, under --root (each output written under a temporary name, renamed when complete;
an existing output is left alone):
  ade20k             reads  ADEChallengeData2016/annotations/{training,validation}/*.png
                     writes ADEChallengeData2016/annotations_detectron2/...: 0 (other) -> 255, k -> k-1
                            (detectron2's prepare_ade20k_sem_seg.py)
  cityscapes         reads  cityscapes/gtFine/{train,val}/*/*_gtFine_labelIds.png
                     writes *_gtFine_labelTrainIds.png beside them (label id -> train id, others 255)
  coco_stuff_164k    reads  coco/stuffthingmaps_trainval2017/{train2017,val2017}/*.png (pixel = COCO id - 1)
                     writes coco/stuffthingmaps_detectron2/...: the 171 used ids -> 0..170, others 255
  coco_stuff_10k     reads  coco/coco_stuff_10k/{images/*.jpg, annotations/*.mat (S: COCO ids, 0 unlabelled),
                            imageLists/{train,test}.txt}
                     writes coco/coco_stuff_10k/{images_detectron2,annotations_detectron2}/{train,test} (171 classes)
  pascal_context_59  reads  VOCdevkit/VOC2010/{JPEGImages, ImageSets/Main/{train,val}.txt},
                            pascal_context/{trainval/*.mat (LabelMap), labels.txt}
                     writes pascal_ctx_d2/images/{training,validation}, pascal_ctx_d2/annotations_ctx59/...:
                            the 59 classes -> 0..58 by name, others 255"""


def _batch_sizes(text: str) -> list[int]:
    """Comma-separated integers (batch sizes, class counts)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4, got {text!r}") from None
    return sizes

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segheads", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train, evaluate and log one classifier x backbone cell")
    run.add_argument("--backbone", help="timm model name or registered encoder (default resnet10t)")
    run.add_argument("--classifier", help="registered classifier head (default softmax)")
    run.add_argument("--dataset", help="dataset with <name>_train/<name>_val registered (default digits_sem_seg)")
    run.add_argument("--neck", help=NECK_HELP)
    run.add_argument("--iters", type=int, help="training iterations")
    run.add_argument("--batch-size", type=int, help="training batch size")
    run.add_argument("--image-size", type=int, help="square training crop size")
    run.add_argument("--seed", type=int, help="random seed")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--output-dir", help="checkpoints go to OUTPUT_DIR/<experiment>/checkpoints unless --storage "
                                          "says (default outputs/)")
    run.add_argument("--experiment", help="MLflow experiment name (default segheads)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--json", type=Path, help="also write the cell result, all metrics included, to this file")
    run.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.01")
    run.add_argument("--resume", action="store_true",
                     help="one worker: continue from the cell's newest checkpoint under --storage, if any "
                          "(a Ray Train run, --workers > 1, always resumes)")
    run.add_argument("--workers", type=int, default=1,
                     help="data-parallel workers (default 1: this process; more: a Ray Train run on local Ray)")
    run.add_argument("--storage", help="checkpoint folder or URI Ray Train accepts "
                                       "(default OUTPUT_DIR/<experiment>/checkpoints)")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")

    measure = commands.add_parser("measure", help="params, FLOPs, latency, throughput and memory of one model")
    measure.add_argument("--backbone", help="timm model name or registered encoder (default resnet10t)")
    measure.add_argument("--classifier", help="registered classifier head (default softmax)")
    measure.add_argument("--neck", help=NECK_HELP)
    measure.add_argument("--num-classes", type=int, default=150, help="classes C (default 150, as ADE20K)")
    measure.add_argument("--image-size", type=int, help="square input size (default 512)")
    measure.add_argument("--batch-sizes", type=_batch_sizes, help="comma-separated batch sweep, e.g. 1,4 (default 1)")
    measure.add_argument("--dtype", help="float32 (default), bfloat16 or float16 (autocast)")
    measure.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    measure.add_argument("--compile", action="store_true", help="time the torch.compile'd model")
    measure.add_argument("--threads", type=int, help="CPU threads, pinned (default: all cores)")
    measure.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    measure.add_argument("--run", help="a logged cell's MLflow run id: its trained model, at its measure settings "
                         "and threads (flags and --set override them)")
    measure.add_argument("--tracking-uri", help="with --run: MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                         "sqlite:///mlflow.db)")
    measure.add_argument("--json", type=Path, help="also write metrics and how they were taken to this file")
    measure.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                         help="config overrides, e.g. model.embed_dim=512 measure.iters=50")

    predicting = commands.add_parser("predict", help="colour-coded predictions of a trained cell, with a legend")
    predicting.add_argument("--run", required=True, help="MLflow run id of a FINISHED cell (it holds weights.pt)")
    source = predicting.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered split (digits_sem_seg_val) or a dataset (its val split)")
    source.add_argument("--images", type=Path, help="a folder of images (jpg, png, ...; searched recursively)")
    predicting.add_argument("--out", type=Path, required=True, help="output folder")
    predicting.add_argument("--limit", type=int, help="at most this many images (default all)")
    predicting.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    grid = commands.add_parser("grid", help="run a classifier x backbone grid on Ray, logged to MLflow")
    grid.add_argument("spec", type=Path, help="grid spec YAML, e.g. jobs/quickstart.yaml")
    grid.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                      help="config overrides for every cell, applied last, e.g. train.iters=4 data.batch_size=2")
    grid.add_argument("--address", help="Ray cluster address (default: start Ray locally on 127.0.0.1)")
    grid.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    grid.add_argument("--results", type=Path, help="results.jsonl to append to (default outputs/<grid name>/results.jsonl)")
    grid.add_argument("--max-concurrent", type=int, help="at most this many cells training at once")
    grid.add_argument("--storage", help="checkpoint folder or URI Ray Train accepts, e.g. s3://bucket/x or a shared "
                                        "filesystem (default: beside the results, outputs/<grid name>/checkpoints)")
    grid.add_argument("--dry-run", action="store_true", help="list the cells and their resources, run nothing")
    grid.add_argument("--gpu-tflops", type=float, default=50.0,
                      help="with --dry-run: sustained TFLOP/s of one GPU, for the GPU-hours estimate (default 50)")
    grid.add_argument("--no-tracking", action="store_true",
                      help="write results.jsonl only (log them later with `segheads import-results`)")
    grid.add_argument("--validate-data", action="store_true",
                      help="scan every image and label map of the grid's datasets before running (validate-data)")

    importing = commands.add_parser("import-results", help="log a grid's results.jsonl lines missing from MLflow")
    importing.add_argument("results", type=Path, help="the grid's results.jsonl")
    importing.add_argument("--experiment", help="MLflow experiment (default: the grid name the results carry)")
    importing.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    preparing = commands.add_parser("prepare-data", help="convert a downloaded dataset to the layout segheads reads",
                                    epilog=PREPARE_LAYOUTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    preparing.add_argument("name", help="ade20k, cityscapes, coco_stuff_164k, coco_stuff_10k or pascal_context_59")
    preparing.add_argument("--root", type=Path, help="datasets folder (default $DETECTRON2_DATASETS or ./datasets)")

    validating = commands.add_parser("validate-data", help="check every image and label map of a dataset")
    validating.add_argument("name", nargs="?", help="a registered dataset (both splits) or split, e.g. digits_sem_seg")
    validating.add_argument("--image-root", type=Path, help="folder of images (instead of NAME)")
    validating.add_argument("--gt-root", type=Path, help="folder of label maps, same relative paths and stems")
    validating.add_argument("--num-classes", type=int, help="with --image-root: class ids are 0..N-1")
    validating.add_argument("--ignore-label", type=int, default=255, help="with --image-root: unlabelled value (255)")
    validating.add_argument("--image-ext", help="with --image-root: image extension (default: jpg, or the one "
                            "image extension the folder holds)")
    validating.add_argument("--gt-ext", default="png", help="with --image-root: label map extension (png)")

    checking = commands.add_parser("check", help="compare finished cells with reference numbers; exit 1 on regression")
    checking.add_argument("reference", type=Path, help="reference YAML, e.g. jobs/reference/quickstart.yaml")
    source = checking.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment (a grid's name) whose FINISHED cells to check")
    source.add_argument("--results", type=Path, help="a grid's results.jsonl")
    checking.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    checking.add_argument("--allow-missing", action="store_true", help="expectations no cell ran the recipe of "
                          "(or no cell matches) do not fail the check; those that were measured still must hold")
    checking.add_argument("--latest", action="store_true", help="where cells of one head differ in more than the "
                          "seed, check only the newest configuration (default: such a select fails, naming them)")

    report = commands.add_parser("report", help="tables, plots and an HTML page from a grid's MLflow runs")
    chosen = report.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--experiment", help="MLflow experiment (a grid's name)")
    chosen.add_argument("--parent", help="a grid's parent run id")
    chosen.add_argument("--scaling", action="store_true",
                        help="no runs: every head's cost on --backbone as the class count grows (ProtoSeg Table 4)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    report.add_argument("--out", type=Path, help="output folder (default reports/<name>, reports/scaling-<backbone>)")
    report.add_argument("--latest", action="store_true", help="one row per head: where its cells differ in more than "
                        "the seed, only the newest configuration (default: a row each, labelled by what differs)")
    report.add_argument("--backbone", default="resnet10t", help="with --scaling: the backbone (default resnet10t)")
    report.add_argument("--classes", type=_batch_sizes, help="with --scaling: class counts (default 150,300,500,847,2000)")
    report.add_argument("--image-size", type=int, default=512, help="with --scaling: input size (default 512)")
    report.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="with --scaling: model.embed_dim=N, model.neck=NAME, train.threads=N")

    ui = commands.add_parser("ui", help="the MLflow UI for the tracking store, on 127.0.0.1")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")

    listing = commands.add_parser("list", help="list registered names")
    listing.add_argument("what", choices=["backbones", "classifiers", "datasets", "necks"])
    listing.add_argument("--pattern", help="shell-style filter, e.g. 'resnet*'")
    listing.add_argument("--details", action="store_true",
                         help="backbones: build each match (pretrained=False) and show its channels and strides")
    heads = commands.add_parser("check-head", help="run the classifier contract on a head (harness.testing); "
                                                   "exit 1 naming each check it fails")
    heads.add_argument("head", help="MODULE:NAME (a PixelClassifier subclass or a factory in an importable module) "
                                    "or a registered classifier, e.g. my_heads.heads:MyHead or protoseg")
    heads.add_argument("--classes", type=int, default=5, help="classes C of the random inputs (default 5)")
    heads.add_argument("--channels", type=int, default=32, help="feature width D of the random inputs (default 32)")
    heads.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="the head's hyper-parameters (YAML values), e.g. preset=paper num_prototypes=4")
    for command in commands.choices.values():  # the log's level and plugins, on every command
        command.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                             help="import a plugin module that registers heads, necks, backbones or datasets "
                                  "(repeatable; installed entry points of segheads.plugins load by themselves)")
        loudness = command.add_mutually_exclusive_group()
        loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
        loudness.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages too")
    return parser
