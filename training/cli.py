"""`python -m training {train,evaluate,report,export,classifier}`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig, load_config_file
from training.data import DATA_DIR_ENV, DatasetError
from training.evaluate import DEFAULT_IWAE_IMAGES, DEFAULT_IWAE_K
from training.sample_quality import DEFAULT_SAMPLES

DEFAULTS = TrainConfig()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected sizes like 512,256, got {text!r}") from exc


def _image_size(text: str) -> tuple[int, int]:
    """--image-size: one side (32) or height and width (64,48 or 64x48)."""
    parts = text.lower().replace("x", ",").replace(" ", ",").split(",")
    try:
        sides = [int(p) for p in parts if p]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a side like 32 or a height,width like 64,48, got {text!r}"
        )
    return sides[0], sides[1]


def _image_channels(text: str) -> int:
    """--channels: the images' colour channels, 1 or 3."""
    if text.strip() in ("1", "3"):
        return int(text)
    raise argparse.ArgumentTypeError(
        f"expected 1 (grayscale) or 3 (RGB), got {text!r}; the widths of the conv layers, "
        "which --channels set before, are --conv-channels now"
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _image_count(text: str) -> int | None:
    """A number of test images, or None for `all` of them."""
    if text.strip().lower() == "all":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number of images >= 1 or 'all', got {text!r}"
        ) from None


def _add_train_args(p: argparse.ArgumentParser) -> None:
    # Every option defaults to None so that only what was typed overrides the config file.
    d = DEFAULTS
    p.add_argument("--config", type=Path, help="a .toml or .json file of settings (flags win)")
    p.add_argument(
        "--out", type=Path, help="run directory (default runs/<model>-<dataset>-z<latent>)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["ae", "vae"], help=f"default {d.model}")
    g.add_argument("--architecture", choices=["mlp", "conv"], help=f"default {d.architecture}")
    g.add_argument("--latent-dim", type=int, help=f"default {d.latent_dim}")
    g.add_argument(
        "--hidden", type=_int_list, help="hidden layer sizes, e.g. 512,256 (default 512)"
    )
    g.add_argument(
        "--conv-channels",
        type=_int_list,
        help="conv channels per stride-2 layer (default: 32,64,128... one layer per halving "
        "until the smaller side is 7 px or less; 32,64 at 28x28)",
    )
    g.add_argument(
        "--res-blocks",
        type=int,
        help="conv only: residual blocks on the smallest feature map of the encoder and of the "
        f"decoder (default {d.res_blocks})",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        help="mnist, fashion-mnist, a folder of PNG/JPEG images, a .npy/.npz file (default mnist)",
    )
    g.add_argument(
        "--data-dir",
        help=f"where mnist/ and fashion-mnist/ live (default ${DATA_DIR_ENV} or ./data)",
    )
    g.add_argument(
        "--image-size",
        type=_image_size,
        metavar="H[,W]",
        help="resize every image to H x W (bilinear; default: the data's own size)",
    )
    g.add_argument(
        "--channels",
        type=_image_channels,
        metavar="1|3",
        help="1: grayscale, 3: RGB (default: the data's own; a folder is RGB when any image "
        "holds colour; MNIST and Fashion-MNIST are grayscale only)",
    )
    g.add_argument(
        "--val-size", type=int, help=f"validation images carved from train (default {d.val_size})"
    )
    g.add_argument("--invert", action="store_true", default=None, help="for dark-on-light images")
    g.add_argument("--binarize", action="store_true", default=None, help="dynamic binarisation")
    g = p.add_argument_group("objective")
    g.add_argument(
        "--likelihood", choices=["bernoulli", "gaussian"], help=f"default {d.likelihood}"
    )
    g.add_argument(
        "--gaussian-sigma",
        type=float,
        help=f"fixed sigma of the Gaussian (default {d.gaussian_sigma})",
    )
    g.add_argument("--beta", type=float, help=f"KL weight (default {d.beta})")
    g.add_argument("--warmup-epochs", type=float, help="linear KL warm-up length (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], help=f"default {d.lr_schedule}")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the config file, then the flags that were given."""
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig.from_dict(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an AE or VAE into a run directory")
    _add_train_args(p)

    p = sub.add_parser("evaluate", help="test-set metrics in nats per image -> RUN/evaluation.json")
    p.add_argument("run", type=Path)
    p.add_argument(
        "--iwae-k",
        type=_non_negative_int,
        default=DEFAULT_IWAE_K,
        help=f"importance samples per image for -log p(x) (0: skip; default {DEFAULT_IWAE_K})",
    )
    p.add_argument(
        "--iwae-images",
        type=_image_count,
        default=DEFAULT_IWAE_IMAGES,
        metavar="N|all",
        help=(
            "test images (a fixed random subset) for the IWAE estimate; the other metrics use "
            f"all of them (default {DEFAULT_IWAE_IMAGES}; 'all' for the whole test set)"
        ),
    )
    p.add_argument("--data-dir", help="override the data folder recorded in the run")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--limit",
        type=_positive_int,
        help="evaluate only the first N test images (for a quick look)",
    )
    p.add_argument(
        "--samples",
        type=_non_negative_int,
        default=DEFAULT_SAMPLES,
        help="prior samples judged by the sample classifier, MNIST and Fashion-MNIST VAEs only "
        f"(0: skip; default {DEFAULT_SAMPLES})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="PNG figures in the run directory")
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")

    p = sub.add_parser("export", help="encoder.onnx, decoder.onnx and manifest.json")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/mnist-vae")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--version", default="1", help="model version recorded in the manifest")
    p.add_argument("--description", default="")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument(
        "--data-dir", help="dataset folder for a 2-D model's latent_map.json (default: the run's)"
    )

    p = sub.add_parser(
        "classifier",
        help="retrain a shipped sample classifier (training/classifiers/DATASET.npz)",
    )
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], required=True)
    p.add_argument("--data-dir", help=f"the dataset's folder (default ${DATA_DIR_ENV} or ./data)")
    p.add_argument("--out", type=Path, help="default: the shipped file, training/classifiers/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Imports here keep `--help` fast: torch takes seconds to load.
    from training.checkpoint import CheckpointError
    from training.classifier import ClassifierError
    from training.export import ExportError
    from training.train import RunError

    try:
        if args.command == "train":
            from training.train import train

            if args.resume and args.config is None and args.out is not None:
                # Resuming reuses the run's own settings; flags typed again must agree with them.
                args.config = args.out / "config.json"
            cfg = build_config(args)
            out = (
                args.out or Path("runs") / f"{cfg.model}-{Path(cfg.dataset).name}-z{cfg.latent_dim}"
            )
            result = train(cfg, out, resume=args.resume, progress=not args.quiet)
            channels, height, width = result.image_shape
            colour = "grayscale" if channels == 1 else "RGB"
            print(
                f"trained {result.run_dir} on {height}x{width} {colour} images: best validation "
                f"loss {result.best_val_loss:.3f} at epoch {result.best_epoch}"
            )
        elif args.command == "evaluate":
            from training.evaluate import evaluate_run

            metrics = evaluate_run(
                args.run,
                iwae_k=args.iwae_k,
                iwae_images=args.iwae_images,
                data_dir=args.data_dir,
                device=args.device,
                checkpoint=args.checkpoint,
                limit=args.limit,
                progress=not args.quiet,
                samples=args.samples,
            )
            print(json.dumps(metrics, indent=2))
        elif args.command == "report":
            from training.report import write_report

            for path in write_report(args.run, data_dir=args.data_dir, checkpoint=args.checkpoint):
                print(path)
        elif args.command == "export":
            from training.export import export_run

            manifest = export_run(
                args.run,
                args.out,
                name=args.name,
                version=args.version,
                checkpoint=args.checkpoint,
                description=args.description,
                data_dir=args.data_dir,
            )
            parity = manifest["parity"]
            worst = max(
                *parity["encoder_max_abs_diff"].values(), *parity["decoder_max_abs_diff"].values()
            )
            print(
                f"exported {manifest['name']} to {args.out}: onnxruntime matches torch at batch "
                f"sizes {', '.join(parity['encoder_max_abs_diff'])} within {worst:.2e} "
                f"(tolerance {parity['atol']})"
            )
        elif args.command == "classifier":
            from training.classifier import train_and_save

            classifier = train_and_save(args.dataset, args.data_dir, args.out)
            print(json.dumps({"dataset": classifier.dataset, **classifier.info}, indent=2))
    except (
        ConfigError,
        DatasetError,
        RunError,
        CheckpointError,
        ExportError,
        ClassifierError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
