"""Schema-driven fuzzing: schemathesis generates requests from the service's own OpenAPI document,
valid and invalid alike, for every operation, and checks each answer against that document.

The properties: nothing ever gets a 5xx, and every answer (status code, content type, JSON body)
is one the schema declares. Derandomized with no example database, so CI runs are reproducible
and nothing is written into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings

EXAMPLES_PER_OPERATION = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(model_dir: Path) -> schemathesis.BaseSchema:
    app = create_app(
        Settings(
            model_dir=model_dir,
            default_model="tiny-vae",
            max_images=64,
            max_generate=32,
            max_samples=8,
        )
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
