"""The OpenAPI file is a valid spec and documents exactly the routes the daemon serves."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

import appliance.api

from ..http_routes import api_routes

SPEC = Path(appliance.api.__file__).parent / "openapi.yaml"


def test_spec_is_valid_openapi() -> None:
    validate(yaml.safe_load(SPEC.read_text()))


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = set()
    for route in api_routes().router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        served.add((route.method, route.resource.canonical))
    assert served == documented
