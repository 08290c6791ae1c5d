"""service.client against a live service: `python -m service` on a free port of 127.0.0.1, serving
the tiny models of the `model_dir` fixture with API keys on. The retry policy is checked on
httpx.MockTransport (scripted 503s) and on a port nobody listens on."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidInputError,
    ModelNotFoundError,
    ServiceConnectionError,
    ServiceError,
    ServiceUnavailableError,
    raise_for_status,
)

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import free_port, serve  # noqa: E402

KEY = "client-test-key"


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    env = {"VAE_DEFAULT_MODEL": "tiny-vae", "VAE_API_KEYS": f"other-key,{KEY}"}
    with serve(env, model_dir=model_dir) as running:
        yield running.url


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server, api_key=KEY) as c:
        yield c


# --- the live service ----------------------------------------------------------------------------


def test_encode_matches_the_json_api(client: Client, server: str) -> None:
    x = digits(3)
    encoding = client.encode(x)
    assert encoding.model == "tiny-vae"  # the service's default, asked for once
    assert encoding.mu.shape == (3, 2) and encoding.mu.dtype == np.float32
    assert encoding.logvar is not None and encoding.logvar.shape == (3, 2)
    reference = httpx.post(
        f"{server}/encode",
        json={"images": x.tolist()},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    np.testing.assert_allclose(encoding.mu, reference["mu"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(encoding.logvar, reference["logvar"], rtol=0, atol=1e-6)
    assert encoding.sigma is not None
    np.testing.assert_allclose(encoding.sigma, np.exp(encoding.logvar / 2), rtol=1e-6)


def test_every_image_layout_gives_the_same_code(client: Client) -> None:
    x = digits(2)
    mu = client.encode(x).mu
    np.testing.assert_array_equal(client.encode(x.reshape(2, 784)).mu, mu)
    np.testing.assert_array_equal(client.encode(x[:, None]).mu, mu)
    np.testing.assert_array_equal(client.encode(x.tolist()).mu, mu)
    one = client.encode(x[0])  # a single (28, 28) image is a batch of one
    assert one.mu.shape == (1, 2)
    np.testing.assert_allclose(one.mu[0], mu[0], atol=1e-6)
    assert client.encode(x[0].reshape(784)).mu.shape == (1, 2)
    as_uint8 = np.round(x * 255).astype(np.uint8)
    np.testing.assert_allclose(
        client.encode(as_uint8).mu, client.encode(as_uint8 / np.float32(255)).mu, atol=1e-6
    )


def test_an_autoencoder_has_no_logvar(client: Client, server: str) -> None:
    encoding = client.encode(digits(2), model="tiny-ae")
    assert encoding.model == "tiny-ae" and encoding.mu.shape == (2, 4)
    assert encoding.logvar is None and encoding.sigma is None
    with Client(server, api_key=KEY, model="tiny-ae") as ae_client:  # a default per client
        assert ae_client.encode(digits(2)).model == "tiny-ae"
        assert ae_client.reconstruct(digits(1)).model == "tiny-ae"


def test_reconstruct(client: Client) -> None:
    x = digits(3)
    first, second = client.reconstruct(x), client.reconstruct(x)
    assert first.mode == "deterministic" and first.seed is None and first.model == "tiny-vae"
    assert first.images.shape == (3, 28, 28) and first.images.dtype == np.float32
    assert first.images.min() >= 0 and first.images.max() <= 1
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_allclose(first.images, client.decode(client.encode(x).mu), atol=1e-6)

    a = client.reconstruct(x, mode="sampled", seed=7)
    b = client.reconstruct(x, mode="sampled", seed=7)
    c = client.reconstruct(x, mode="sampled", seed=8)
    assert a.seed == 7 and a.mode == "sampled"
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)

    drawn = client.reconstruct(x, mode="sampled")
    assert drawn.seed is not None
    again = client.reconstruct(x, mode="sampled", seed=drawn.seed)
    np.testing.assert_array_equal(drawn.images, again.images)

    many = client.reconstruct(x, mode="sampled", seed=1, samples=4)
    assert many.images.shape == (3, 4, 28, 28)


def test_invert(client: Client) -> None:
    dark = digits(3)
    light = 1.0 - dark  # dark ink on light paper
    reference = client.encode(dark).mu
    assert not np.allclose(client.encode(light).mu, reference, atol=1e-3)  # arrays: as sent
    np.testing.assert_array_equal(client.encode(light, invert=False).mu, client.encode(light).mu)
    np.testing.assert_allclose(client.encode(light, invert=True).mu, reference, atol=1e-5)
    mixed = np.stack([light[0], dark[1], light[2]])
    np.testing.assert_allclose(client.encode(mixed, invert="auto").mu, reference, atol=1e-5)
    as_uint8 = np.round(light * 255).astype(np.uint8)
    np.testing.assert_allclose(
        client.encode(as_uint8, invert="auto").mu,
        client.encode(255 - as_uint8).mu,
        atol=1e-5,
    )
    expected = client.reconstruct(dark, mode="sampled", seed=3).images
    np.testing.assert_allclose(
        client.reconstruct(light, mode="sampled", seed=3, invert="auto").images, expected, atol=1e-5
    )
    with pytest.raises(ValueError, match="invert must be 'auto', True, False or None"):
        client.encode(dark, invert="yes")  # type: ignore[arg-type]


def test_generate_and_decode(client: Client) -> None:
    g = client.generate(5, seed=3)
    assert g.model == "tiny-vae" and g.seed == 3
    assert g.images.shape == (5, 28, 28) and g.z.shape == (5, 2)
    assert g.images.dtype == np.float32 and g.z.dtype == np.float32
    same = client.generate(5, seed=3)
    np.testing.assert_array_equal(g.images, same.images)
    np.testing.assert_array_equal(g.z, same.z)
    np.testing.assert_allclose(client.decode(g.z), g.images, atol=1e-6)

    drawn = client.generate(2)
    np.testing.assert_array_equal(client.generate(2, seed=drawn.seed).z, drawn.z)

    cool = client.generate(5, seed=3, temperature=0.5)
    np.testing.assert_allclose(cool.z, 0.5 * g.z, rtol=1e-6)
    # Temperature 0 decodes the prior's mean, z = 0.
    mean = client.generate(2, seed=3, temperature=0.0)
    np.testing.assert_array_equal(mean.z, np.zeros((2, 2), np.float32))
    np.testing.assert_allclose(mean.images, client.decode(mean.z), atol=1e-6)
    with pytest.raises(InvalidInputError, match="temperature"):
        client.generate(2, temperature=-1.0)


def test_decode(client: Client) -> None:
    z = np.array([[0.0, 0.0], [1.5, -0.5]])
    images = client.decode(z)
    assert images.shape == (2, 28, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(client.decode(z[1]), images[1:])  # one vector: batch of one
    assert client.decode(np.zeros((1, 4)), model="tiny-ae").shape == (1, 28, 28)


def test_models(client: Client) -> None:
    models = {m.name: m for m in client.models()}
    assert set(models) == {"tiny-vae", "tiny-ae"}
    assert models["tiny-vae"].default and not models["tiny-ae"].default
    assert models["tiny-vae"].kind == "vae" and models["tiny-vae"].latent_dim == 2
    assert models["tiny-ae"].kind == "ae" and models["tiny-ae"].latent_dim == 4
    assert models["tiny-vae"].image_shape == (28, 28)
    assert "manifest" in models["tiny-vae"].raw
    one = client.model("tiny-ae")
    assert one.name == "tiny-ae" and one.version == models["tiny-ae"].version
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        client.model("nope")


def test_health_and_ready(client: Client) -> None:
    assert client.health() and client.ready()
    with Client(f"http://127.0.0.1:{free_port()}") as nobody:
        assert not nobody.health() and not nobody.ready()


def test_errors_carry_the_service_message(client: Client) -> None:
    with pytest.raises(ModelNotFoundError) as unknown:
        client.encode(digits(1), model="nope")
    error = unknown.value
    assert error.status_code == 404
    assert "no model named 'nope'" in error.message and "tiny-vae" in error.message
    assert str(error).startswith("HTTP 404: model: no model named 'nope'")
    assert error.request_id and error.request_id in str(error)

    bright = digits(2)
    bright[1, 3, 3] = 1.5
    with pytest.raises(InvalidInputError, match="images") as too_bright:
        client.encode(bright)
    assert too_bright.value.status_code == 422

    with pytest.raises(InvalidInputError, match=r"images.*\(2, 27, 27\)"):
        client.reconstruct(np.zeros((2, 27, 27), np.float32))
    with pytest.raises(InvalidInputError, match="z"):
        client.decode(np.zeros((1, 3)))
    with pytest.raises(InvalidInputError, match="autoencoder"):
        client.generate(1, model="tiny-ae")
    with pytest.raises(InvalidInputError, match="autoencoder"):
        client.reconstruct(digits(1), mode="sampled", model="tiny-ae")
    with pytest.raises(InvalidInputError, match="seed"):
        client.reconstruct(digits(1), mode="sampled", seed=-1)


def test_api_keys(server: str) -> None:
    with Client(server) as anonymous, pytest.raises(AuthenticationError) as missing:
        anonymous.encode(digits(1), model="tiny-vae")
    assert missing.value.status_code == 401 and "missing API key" in missing.value.message
    with Client(server, api_key="wrong") as wrong, pytest.raises(AuthenticationError) as bad:
        wrong.models()
    assert "invalid API key" in str(bad.value)
    with Client(server) as anonymous:
        assert anonymous.health() and anonymous.ready()  # probes need no key
    with Client(server, api_key=KEY) as keyed:
        assert keyed.decode(np.zeros((1, 2))).shape == (1, 28, 28)


def test_async_client(server: str, client: Client) -> None:
    x = digits(3)

    async def main() -> None:
        async with AsyncClient(server, api_key=KEY) as ac:
            assert await ac.health() and await ac.ready()
            encoding = await ac.encode(x)
            assert encoding.model == "tiny-vae"
            np.testing.assert_array_equal(encoding.mu, client.encode(x).mu)
            det = await ac.reconstruct(x)
            np.testing.assert_array_equal(det.images, client.reconstruct(x).images)
            inverted = await ac.encode(1.0 - x, invert=True)
            np.testing.assert_allclose(inverted.mu, encoding.mu, atol=1e-5)
            auto = await ac.reconstruct(1.0 - x, invert="auto")
            np.testing.assert_allclose(auto.images, det.images, atol=1e-5)
            sampled = await asyncio.gather(
                *(ac.reconstruct(x, mode="sampled", seed=5) for _ in range(4))
            )
            for result in sampled:
                np.testing.assert_array_equal(result.images, sampled[0].images)
            g = await ac.generate(4, seed=11)
            np.testing.assert_array_equal(g.z, client.generate(4, seed=11).z)
            np.testing.assert_allclose(await ac.decode(g.z), g.images, atol=1e-6)
            assert {m.name for m in await ac.models()} == {"tiny-vae", "tiny-ae"}
            assert (await ac.model("tiny-ae")).kind == "ae"
            with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
                await ac.encode(x, model="nope")
        async with AsyncClient(server) as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.generate(1)

    asyncio.run(main())


# --- retries (scripted answers) -----------------------------------------------------------------


def scripted(
    statuses: list[int], retry_after: str | None = "0"
) -> tuple[Callable[..., httpx.Response], list[httpx.Request]]:
    """A handler answering 503s (or other errors) in turn, then 200 with one .npy image."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(statuses):
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            detail = {"detail": f"scripted {statuses[len(seen) - 1]}"}
            return httpx.Response(statuses[len(seen) - 1], json=detail, headers=headers)
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((1, 28, 28), np.float32))
        return httpx.Response(
            200, content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"}
        )

    return handler, seen


def test_503_with_retry_after_is_retried() -> None:
    handler, seen = scripted([503, 503])
    with Client(transport=httpx.MockTransport(handler)) as c:
        assert c.decode(np.zeros((1, 2))).shape == (1, 28, 28)
    assert len(seen) == 3
    assert {r.url.path for r in seen} == {"/decode"}
    assert all(r.content == seen[0].content for r in seen)  # the same body every time


def test_503_forever_gives_up_after_max_retries() -> None:
    handler, seen = scripted([503] * 10, retry_after="3600")
    start = time.monotonic()
    with (
        Client(transport=httpx.MockTransport(handler), max_retries=2, max_retry_wait=0.01) as c,
        pytest.raises(ServiceUnavailableError) as unavailable,
    ):
        c.decode(np.zeros((1, 2)))
    assert time.monotonic() - start < 2  # Retry-After: 3600 capped by max_retry_wait
    assert len(seen) == 3
    assert unavailable.value.status_code == 503
    assert unavailable.value.message == "scripted 503"
    assert unavailable.value.retry_after == 3600


def test_503_without_retry_after_backs_off() -> None:
    handler, seen = scripted([503, 503, 503], retry_after=None)
    with Client(transport=httpx.MockTransport(handler), backoff=0.001) as c:
        c.decode(np.zeros((1, 2)))
    assert len(seen) == 4
    handler, seen = scripted([503], retry_after=None)
    with (
        Client(transport=httpx.MockTransport(handler), max_retries=0) as c,
        pytest.raises(ServiceUnavailableError),
    ):
        c.decode(np.zeros((1, 2)))
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ServiceError),
        (504, ServiceError),
        (422, InvalidInputError),
        (401, AuthenticationError),
        (404, ModelNotFoundError),
    ],
)
def test_other_errors_are_not_retried(status: int, error: type[ServiceError]) -> None:
    handler, seen = scripted([status, status])
    with Client(transport=httpx.MockTransport(handler)) as c, pytest.raises(error) as raised:
        c.decode(np.zeros((1, 2)))
    assert len(seen) == 1
    assert type(raised.value) is error and raised.value.status_code == status
    assert raised.value.message == f"scripted {status}"


def test_async_client_retries_too() -> None:
    handler, seen = scripted([503, 503])

    async def main() -> None:
        async with AsyncClient(transport=httpx.MockTransport(handler)) as ac:
            assert (await ac.decode(np.zeros((1, 2)))).shape == (1, 28, 28)

    asyncio.run(main())
    assert len(seen) == 3


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


def test_refused_connections_are_retried_then_raised() -> None:
    transport = CountingTransport()
    url = f"http://127.0.0.1:{free_port()}"
    with (
        Client(url, transport=transport, max_retries=2, backoff=0.001) as c,
        pytest.raises(ServiceConnectionError) as refused,
    ):
        c.generate(1)
    assert transport.calls == 3
    assert refused.value.status_code is None and isinstance(refused.value, ServiceError)
    assert "after 3 attempts" in str(refused.value)
    assert isinstance(refused.value.__cause__, httpx.ConnectError)


def test_error_shapes() -> None:
    request = httpx.Request("POST", "http://x/v2/models/m/infer")
    with pytest.raises(InvalidInputError, match=r"^HTTP 400: bad shape$"):
        raise_for_status(httpx.Response(400, json={"error": "bad shape"}, request=request))
    with pytest.raises(ServiceError, match=r"^HTTP 502: Bad Gateway$"):
        raise_for_status(httpx.Response(502, request=request))
    raise_for_status(httpx.Response(200, request=request))


def test_an_httpx_client_passed_in_stays_open(server: str) -> None:
    with httpx.Client() as http:
        with Client(server, api_key=KEY, httpx_client=http) as c:
            assert c.health()
        assert not http.is_closed


def test_the_client_imports_no_server_stack() -> None:
    code = (
        "import sys, service.client\n"
        "heavy = {'fastapi', 'starlette', 'onnxruntime', 'torch', 'pydantic', 'orjson'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
