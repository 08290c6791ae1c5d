"""Fixtures: tiny synthetic IDX datasets -> configs -> trained runs -> exported models (the
artifact) -> service settings -> app -> client.

Nothing here reads ../shared or the network: every dataset is generated in tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import ServiceApp, create_app
from service.settings import Settings
from training.config import TrainConfig
from training.data import IDX_DATASETS, write_idx
from training.train import train

N_TRAIN, N_TEST = 400, 120


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28) images: class c is a bright bar at row 3 + 2c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 3 + 2 * int(c)
        start = rng.integers(2, 8)
        images[i, row : row + 3, start : start + 18] = rng.integers(180, 256)
    return images, labels


def digits(n: int, seed: int = 0) -> np.ndarray:
    """float32 (n, 28, 28) images in [0, 1] for the service tests: a bright bar on faint noise."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.1, size=(n, 28, 28)).astype(np.float32)
    for i in range(n):
        images[i, 5 + i % 15 : 10 + i % 15, 4:24] = 0.9
    return images


def write_mnist_like(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """data_dir/mnist/ with the four official file names, gzip IDX."""
    files = IDX_DATASETS["mnist"].files
    target = folder / "mnist"
    target.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    write_idx(target / files["train_images"].name, train_x)
    write_idx(target / files["train_labels"].name, train_y)
    write_idx(target / files["test_images"].name, test_x)
    write_idx(target / files["test_labels"].name, test_y)
    return folder


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Tiny models: more threads only add overhead and make timings noisy on 2-core CI.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist_like(tmp_path_factory.mktemp("data"))


def tiny_config(data_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "dataset": "mnist",
        "data_dir": str(data_dir),
        "hidden": (32,),
        "latent_dim": 2,
        "epochs": 2,
        "batch_size": 32,
        "val_size": 50,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    train(tiny_config(data_dir, epochs=3), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "ae"
    train(tiny_config(data_dir, model="ae", latent_dim=4), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, vae_run: Path, ae_run: Path) -> Path:
    """A model directory as the service reads it: a tiny VAE (latent 2) and AE (latent 4)."""
    from training.export import export_run

    folder = tmp_path_factory.mktemp("served")
    export_run(vae_run, folder / "tiny-vae")
    export_run(ae_run, folder / "tiny-ae")
    return folder


@pytest.fixture(scope="session")
def exported_vae(tmp_path_factory: pytest.TempPathFactory, vae_run: Path) -> Path:
    from training.export import export_run

    out = tmp_path_factory.mktemp("models") / "tiny-vae"
    export_run(vae_run, out)
    return out


@pytest.fixture
def settings(model_dir: Path) -> Settings:
    """The service on the tiny models, with small limits (tests override this fixture to change
    them)."""
    return Settings(
        model_dir=model_dir, default_model="tiny-vae", max_images=64, max_generate=32, max_samples=8
    )


@pytest.fixture
def app(settings: Settings) -> ServiceApp:
    return create_app(settings)


@pytest.fixture
def client(app: ServiceApp) -> Iterator[TestClient]:
    """A client of `app`, its lifespan run (models loaded) for the test's duration."""
    with TestClient(app) as test_client:
        yield test_client
