"""GET /metrics: Prometheus' text format. The request families come from the
instrumentation of every API process (merged through prometheus-client's multiprocess
files when PROMETHEUS_MULTIPROC_DIR is set, as it must be under `uvicorn --workers N`);
the `mec_` families are read from the database and the broker at each scrape."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from api.deps import SessionDep, _bearer, current_key
from mec_platform import keys
from mec_platform.keys import Scope
from mec_platform.prometheus import PlatformCollector
from mec_platform.settings import get_settings

router = APIRouter(tags=["system"])


def _from_allowed_network(request: Request) -> bool:
    try:
        address = ipaddress.ip_address(request.client.host if request.client else "")
    except ValueError:  # not an address (e.g. a Unix socket's peer)
        return False
    return any(address in ipaddress.ip_network(net, strict=False)
               for net in get_settings().metrics_networks)


async def metrics_reader(request: Request, session: SessionDep,
                         credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Depends(_bearer)]) -> None:
    """From MEC_METRICS_NETWORKS (default: this host) no key is needed; from elsewhere
    a key with the admin scope, since the figures span every project."""
    if _from_allowed_network(request):
        return
    key = await current_key(session, request, credentials)
    if not keys.allows(key, Scope.ADMIN):
        raise HTTPException(403, f"GET /metrics from {request.client.host} needs a key with "
                                 "the admin scope, or a client address in "
                                 "MEC_METRICS_NETWORKS")


def _requests_registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics(session: SessionDep) -> Response:
    """The platform's figures and the API's request counts and latencies."""
    platform = CollectorRegistry(auto_describe=False)
    platform.register(PlatformCollector(session))
    return Response(generate_latest(_requests_registry()) + generate_latest(platform),
                    media_type=CONTENT_TYPE_LATEST)
