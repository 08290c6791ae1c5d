"""The simdjson fast path for JSON tensors: the same numbers as a plain JSON parser when the body
is regular, and a refusal (None, so pydantic words the error) for anything else."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import pytest

from service.codecs.json_input import json_tensor_body
from service.codecs.npy import npz_bytes, read_npy, stored_zip
from service.codecs.responses import JSONBody, PiecewiseJSONBody

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("tensor", "value"),
    [
        ("images", RNG.random((3, 784)).tolist()),
        ("images", RNG.random((2, 28, 28)).tolist()),
        ("images", [[0, 1, 0.5, 1e-7, -0.0]]),  # integers and floats mixed
        ("z", RNG.normal(size=(5, 2)).tolist()),
        ("z", [[1]]),
    ],
)
def test_regular_tensors_read_exactly(tensor: str, value: list[Any]) -> None:
    body = json.dumps({"model": "tiny-vae", tensor: value, "seed": 7, "mode": "sampled"}).encode()
    parsed = json_tensor_body(body, tensor)
    assert parsed is not None
    fields, array = parsed
    assert fields == {"model": "tiny-vae", "seed": 7, "mode": "sampled"}
    expected = np.array(value, dtype=np.float64)
    assert array.dtype == np.float64 and array.shape == expected.shape
    assert np.array_equal(array, expected)  # bit for bit: both parse correctly rounded


def row(n: int, value: str = "0.5") -> str:
    return "[" + ", ".join([value] * n) + "]"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{" + f'"images": [{row(784)}, {row(783)}]' + "}", id="ragged"),
        # as_buffer flattens lists: each of these has the right number of numbers in all
        pytest.param(
            '{"images": [[[0.5], ' + ", ".join(["0.5"] * 783) + "]]}", id="one-number-list"
        ),
        pytest.param(
            '{"images": [[[], '
            + ", ".join(["0.5"] * 782)
            + "], [[0.5, 0.5], "
            + ", ".join(["0.5"] * 782)
            + "]]}",
            id="lists-that-even-out",
        ),
        pytest.param(
            '{"images": [' + ", ".join([row(28)] * 27) + ", " + row(27) + ", " + row(29) + "]]}",
            id="ragged-2d",
        ),
        pytest.param('{"images": [' + row(784) + ', "0.5"]}', id="string-row"),
        pytest.param('{"images": [[' + '"0.5", ' * 783 + "0.5]]}", id="strings"),
        pytest.param('{"images": [[true' + ", 0" * 783 + "]]}", id="boolean"),
        pytest.param('{"images": [[null' + ", 0" * 783 + "]]}", id="null"),
        pytest.param('{"images": [[NaN' + ", 0" * 783 + "]]}", id="nan"),
        pytest.param('{"images": [[1e400' + ", 0" * 783 + "]]}", id="overflow"),
        pytest.param('{"images": [[' + "0, " * 783 + "99999999999999999999999]]}", id="huge-int"),
        pytest.param('{"images": [' + row(784) + "]", id="truncated"),
        pytest.param('{"images": [' + row(784) + "]} trailing", id="trailing"),
        pytest.param('{"images": []}', id="empty"),
        pytest.param('{"images": [[]]}', id="empty-row"),
        pytest.param('{"images": ' + row(784) + "}", id="one-level"),
        pytest.param('{"images": [{"a": 1}]}', id="object-row"),
        pytest.param('{"pixels": [' + row(784) + "]}", id="no-field"),
        pytest.param('{"images": [' + row(784) + '], "images": [' + row(784) + "]}", id="twice"),
        pytest.param('{"images": [' + row(784) + '], "model": ["a"]}', id="list-param"),
        pytest.param('{"images": [' + row(784) + '], "model": {"a": 1}}', id="object-param"),
        pytest.param("[" + row(784) + "]", id="not-an-object"),
        pytest.param("", id="no-body"),
    ],
)
def test_anything_irregular_is_left_to_pydantic(raw: str) -> None:
    assert json_tensor_body(raw.encode(), "images") is None


def test_a_bracket_inside_a_string_only_turns_the_fast_path_down() -> None:
    body = ('{"images": [' + row(784) + '], "mode": "sampled["}').encode()
    assert json_tensor_body(body, "images") is None


def test_npz_answers_are_archives_numpy_and_zip_tools_read() -> None:
    mu = RNG.normal(size=(3, 16)).astype(np.float32)
    body = npz_bytes({"mu": mu, "logvar": 2 * mu})
    with np.load(io.BytesIO(body)) as archive:
        assert archive.files == ["mu", "logvar"]
        assert np.array_equal(archive["mu"], mu) and np.array_equal(archive["logvar"], 2 * mu)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None  # every member's CRC checks out
        assert [m.filename for m in archive.infolist()] == ["mu.npy", "logvar.npy"]
    members = {"a.npy": b"", "b.txt": bytes(range(256)) * 100}
    with zipfile.ZipFile(io.BytesIO(stored_zip(members))) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == members


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("fortran", [False, True])
def test_npy_bodies_of_every_version_read_alike(version: tuple[int, int], fortran: bool) -> None:
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 784) / 2000
    x = np.asfortranarray(x) if fortran else x
    for _ in range(2):  # the second time from the header cache
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, x, version=version)
        assert np.array_equal(read_npy(buffer.getvalue(), "images"), x)


def test_a_large_json_answer_written_in_pieces_is_the_same_json() -> None:
    rng = np.random.default_rng(0)
    for rows in (1, 63, 64, 65, 1000):  # under, at and over one piece (64 images)
        fields = {
            "images": rng.random((rows, 28, 28), dtype=np.float32),
            "z": rng.random((rows, 2), dtype=np.float32),
            "model": "m",
            "seed": 3,
        }
        assert PiecewiseJSONBody(fields).body == JSONBody(fields).body
