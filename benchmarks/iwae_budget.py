"""What the IWAE estimate of -log p(x) costs and how precise it is, for k samples x N images.

For each number of importance-sampled test images N and samples per image k, prints what
`evaluate` writes (the estimate for the whole test set in nats per image, its standard error, the
part of that from using N images only, the drop from k/2 to k samples) and the seconds, wall-clock
and CPU, that it took.
The model is a run's checkpoint, or a bundled ONNX model folder whose weights are loaded back
into the torch network (MLP models exported by this package). Needs the dataset's files.

    python benchmarks/iwae_budget.py --model models/mnist-vae --data-dir ../shared/data
    python benchmarks/iwae_budget.py --run runs/my-vae --k 1,50,200,1000 --images 1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from training.config import TrainConfig
from training.data import load_splits
from training.evaluate import iwae_estimate, test_images
from training.model import AutoEncoder, ModelConfig
from training.train import load_run


def model_from_onnx(folder: Path) -> tuple[AutoEncoder, TrainConfig]:
    """The torch network of an exported model, its weights read back from the ONNX graphs."""
    manifest = json.loads((folder / "manifest.json").read_text())
    model = AutoEncoder(ModelConfig.from_dict(manifest["architecture"]))
    training = {k: v for k, v in manifest["training"].items() if k not in ("epoch", "checkpoint")}
    state = {}
    for part in ("encoder", "decoder"):
        graph = onnx.load(str(folder / manifest[part]["file"])).graph
        for init in graph.initializer:
            name = init.name.removeprefix("model.")
            if name in model.state_dict():
                state[name] = torch.from_numpy(numpy_helper.to_array(init).copy())
    model.load_state_dict(state)  # strict: every weight must have come from the graphs
    model.eval()
    # The network must reproduce the exported encoder, or the numbers would be another model's.
    x = torch.rand(8, *model.config.image_shape, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    onnx_mu = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch_mu = model.encode(x)[0].numpy()
    if not np.allclose(onnx_mu, torch_mu, atol=1e-4):
        raise SystemExit(f"{folder}: weights read back from ONNX do not reproduce the encoder")
    return model, TrainConfig.from_dict({**training, "device": "cpu"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", type=Path, help="an exported model folder, e.g. models/mnist-vae"
    )
    source.add_argument("--run", type=Path, help="a run directory with checkpoints/")
    parser.add_argument("--data-dir", help="where mnist/ and fashion-mnist/ live")
    parser.add_argument("--k", default="1,50,200,1000", help="samples per image, comma-separated")
    parser.add_argument("--images", default="1000,10000", help="numbers of test images")
    args = parser.parse_args()

    if args.model:
        model, cfg = model_from_onnx(args.model)
    else:
        run = load_run(args.run)
        model, cfg = run.model, run.config
    splits = load_splits(cfg.dataset, args.data_dir or cfg.data_dir, cfg.val_size)
    x = test_images(cfg, splits, torch.device("cpu"))
    print(
        f"{splits.name}, {len(x)} test images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print("| k | images | -log p(x) | stderr | of which subset | drop from k/2 | s | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for images in (int(v) for v in args.images.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            wall, cpu = time.perf_counter(), time.process_time()
            est = iwae_estimate(model, cfg, x, k, images, progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            drop = est.get("drop_from_half_k")
            print(
                f"| {k} | {est['images']} | {est['nll']:.2f} | {est['nll_stderr']:.2f} | "
                f"{est['subset_stderr']:.2f} | {'' if drop is None else f'{drop:.2f}'} | "
                f"{wall:.1f} | {cpu:.1f} |",
                flush=True,
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
