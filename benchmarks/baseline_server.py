"""The comparison point: a FastAPI server as people typically hand-write one.

Async endpoints, pydantic bodies of nested float lists, `session.run` inline on the event loop,
JSON responses through FastAPI's default encoder, plain `uvicorn.run`. It serves the same
default models from ./models so that the benchmark compares serving code, not models.

    python benchmarks/baseline_server.py --port 8001
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8001)
parser.add_argument("--model-dir", default="models/mnist-vae")
args = parser.parse_args()

folder = Path(args.model_dir)
manifest = json.loads((folder / "manifest.json").read_text())
encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
app = FastAPI()


class Images(BaseModel):
    images: list[list[float]]


class Reconstruct(Images):
    mode: Literal["deterministic", "sampled"] = "deterministic"
    seed: int | None = None


class Generate(BaseModel):
    n: int = 1
    seed: int | None = None


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/encode")
async def encode(body: Images) -> dict[str, object]:
    x = np.array(body.images, dtype=np.float32).reshape(-1, 1, 28, 28)
    mu, logvar = encoder.run(None, {"x": x})
    return {"mu": mu.tolist(), "logvar": logvar.tolist()}


@app.post("/reconstruct")
async def reconstruct(body: Reconstruct) -> dict[str, object]:
    x = np.array(body.images, dtype=np.float32).reshape(-1, 1, 28, 28)
    mu, logvar = encoder.run(None, {"x": x})
    z = mu
    if body.mode == "sampled":
        eps = np.random.default_rng(body.seed).standard_normal(mu.shape).astype(np.float32)
        z = mu + np.exp(0.5 * logvar) * eps
    (images,) = decoder.run(None, {"z": z})
    return {"images": images.reshape(-1, 28, 28).tolist()}


@app.post("/generate")
async def generate(body: Generate) -> dict[str, object]:
    z = np.random.default_rng(body.seed).standard_normal((body.n, manifest["latent_dim"]))
    (images,) = decoder.run(None, {"z": z.astype(np.float32)})
    return {"images": images.reshape(-1, 28, 28).tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
