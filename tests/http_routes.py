"""The daemon's /api/v1 application built without a store, to list its routes (the OpenAPI
check and the every-route-needs-credentials check)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from appliance.api.app import api_v1
from appliance.api.ingest.backup import IngestApi
from appliance.api.ingest.enrol import EnrolApi
from appliance.api.page.enrol import EnrolPageApi
from appliance.api.page.holds import HoldsApi
from appliance.api.page.notify import NotifyApi
from appliance.api.page.overview import OverviewApi
from appliance.api.page.plans import BackupsApi
from appliance.api.page.reports import ReportsApi
from appliance.api.page.restore import RestoreApi
from appliance.api.page.seed import SeedDisksApi
from appliance.api.page.signin import SignInApi
from appliance.api.page.statements import StatementsApi
from appliance.enrol.installer import Pins


async def _nobody(token: str) -> None:
    return None


def api_routes() -> web.Application:
    """Every route of both front doors, as the daemon mounts them (handlers never run)."""
    pool = ThreadPoolExecutor(1)
    ingest = IngestApi(None, pool, max_json_bytes=1 << 20, appliance_serial="t")  # type: ignore[arg-type]
    page = [SignInApi(None, pool, pool),  # type: ignore[arg-type]
            OverviewApi(pool, dict),
            RestoreApi(None, pool, None, ingest.jobs),  # type: ignore[arg-type]
            SeedDisksApi(pool),
            StatementsApi(pool, None),
            ReportsApi(pool, dict),
            BackupsApi(None, pool, None, print, "8-5-4"),  # type: ignore[arg-type]
            NotifyApi(pool, None),  # type: ignore[arg-type]
            HoldsApi(None, pool),  # type: ignore[arg-type]
            EnrolPageApi(None, pool, Pins("", ""))]  # type: ignore[arg-type]
    enrol = EnrolApi(None, pool, None, Pins("", ""), "t")  # type: ignore[arg-type]
    return api_v1(ingest=[ingest, enrol], page=page, tokens=_nobody, sessions=None,
                  max_json_bytes=1 << 20)
