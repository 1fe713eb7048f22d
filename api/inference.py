"""The API process's client of TorchServe's inference endpoints (serving.client): TorchServe's
key is the platform's, held and renewed there, so that apps only ever see their own API
key."""

from __future__ import annotations

from functools import lru_cache

from mec_platform import model_server
from serving.client import AsyncTorchServe, TorchServe


@lru_cache(maxsize=1)
def torchserve() -> AsyncTorchServe:
    """The process's TorchServe client (made on first use, for the settings of then)."""
    return model_server.async_client()


@lru_cache(maxsize=1)
def management() -> TorchServe:
    """The process's client of TorchServe's management API (readiness: what it serves)."""
    return model_server.client()
