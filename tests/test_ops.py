"""service.ops: the operations on a loaded model, with no HTTP in between."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from service import ops
from service.errors import InvalidInput
from service.models.registry import ModelRegistry
from service.schemas import DecodeParams, EncodeParams, GenerateRequest, ReconstructParams
from service.settings import Settings

from .conftest import digits


@pytest.fixture
def registry(settings: Settings) -> Iterator[ModelRegistry]:
    loaded = ModelRegistry.load(settings)
    yield loaded
    asyncio.run(loaded.close())


def run(operation: Any, params: Any, registry: ModelRegistry, model: str, x: Any) -> Any:
    return asyncio.run(operation(params, registry.models[model], x, registry.settings))


def images(n: int) -> np.ndarray:
    return digits(n)[..., None]  # (N, 28, 28, 1)


def test_encode_gives_mu_and_logvar_per_image(registry: ModelRegistry) -> None:
    latents = run(ops.encode, EncodeParams(), registry, "tiny-vae", images(3))
    assert isinstance(latents, ops.Latents)
    assert (latents.model, latents.latent_dim) == ("tiny-vae", 2)
    assert latents.mu.shape == (3, 2) and latents.logvar is not None
    assert latents.logvar.shape == (3, 2)
    code = run(ops.encode, EncodeParams(), registry, "tiny-ae", images(1))
    assert code.mu.shape == (1, 4) and code.logvar is None


def test_deterministic_reconstruct_is_decode_of_mu(registry: ModelRegistry) -> None:
    x = images(2)
    result = run(ops.reconstruct, ReconstructParams(), registry, "tiny-vae", x)
    mu, _ = registry.models["tiny-vae"].encode(x)
    assert result.seed is None and result.mode == "deterministic"
    np.testing.assert_allclose(result.images, registry.models["tiny-vae"].decode(mu), atol=1e-6)


def test_sampled_reconstruct_is_reproducible_from_its_seed(registry: ModelRegistry) -> None:
    params = ReconstructParams(mode="sampled", samples=3)
    first = run(ops.reconstruct, params, registry, "tiny-vae", images(2))
    assert first.images.shape == (2, 3, 28, 28, 1) and first.seed is not None
    again = ReconstructParams(mode="sampled", samples=3, seed=first.seed)
    np.testing.assert_array_equal(
        run(ops.reconstruct, again, registry, "tiny-vae", images(2)).images, first.images
    )


@pytest.mark.parametrize(
    ("params", "model", "field"),
    [
        (ReconstructParams(mode="sampled"), "tiny-ae", "mode"),
        (ReconstructParams(seed=1), "tiny-vae", "mode"),
        (ReconstructParams(mode="sampled", samples=9), "tiny-vae", "samples"),
        (ReconstructParams(mode="sampled", samples=8), "tiny-vae", "samples"),  # 10 x 8 > 64
    ],
)
def test_reconstruct_refusals_name_the_field(
    registry: ModelRegistry, params: ReconstructParams, model: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        run(ops.reconstruct, params, registry, model, images(10))
    assert refused.value.field == field and refused.value.status == 422


def test_generate_decodes_temperature_times_prior_noise(registry: ModelRegistry) -> None:
    result = run(ops.generate, GenerateRequest(n=4, seed=5), registry, "tiny-vae", None)
    assert result.seed == 5 and result.z.shape == (4, 2) and result.images.shape == (4, 28, 28, 1)
    expected = np.random.default_rng(5).standard_normal((4, 2), np.float32)
    np.testing.assert_array_equal(result.z, expected)
    cold = run(ops.generate, GenerateRequest(n=1, temperature=0), registry, "tiny-vae", None)
    assert not cold.z.any()
    with pytest.raises(InvalidInput, match="autoencoder"):
        run(ops.generate, GenerateRequest(), registry, "tiny-ae", None)
    with pytest.raises(InvalidInput, match="at most 32"):
        run(ops.generate, GenerateRequest(n=33), registry, "tiny-vae", None)


def test_decode_gives_one_image_per_vector(registry: ModelRegistry) -> None:
    z = np.zeros((3, 2), np.float32)
    result = run(ops.decode, DecodeParams(), registry, "tiny-vae", z)
    assert result.model == "tiny-vae" and result.images.shape == (3, 28, 28, 1)
    assert result.images.min() >= 0 and result.images.max() <= 1
