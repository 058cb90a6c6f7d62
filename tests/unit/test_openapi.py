"""The OpenAPI file is a valid spec and documents exactly the routes the daemon serves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from openapi_spec_validator import validate

import appliance.ingest
from appliance.ingest.api import IngestApi
from appliance.web.backups_api import BackupsApi
from appliance.web.page_api import PageApi

SPEC = Path(appliance.ingest.__file__).parent / "openapi.yaml"


def test_spec_is_valid_openapi() -> None:
    validate(yaml.safe_load(SPEC.read_text()))


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    api = IngestApi(store=None, pool=ThreadPoolExecutor(1), max_json_bytes=1 << 20,  # type: ignore[arg-type]
                    appliance_serial="t")
    api.attach_page(PageApi(None, ThreadPoolExecutor(1), None, None, dict, None))  # type: ignore[arg-type]
    api.attach_backups(BackupsApi(None, ThreadPoolExecutor(1), None, print, "8-5-4"))  # type: ignore[arg-type]
    served = set()
    for route in api.app().router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        served.add((route.method, route.resource.canonical))
    assert served == documented
