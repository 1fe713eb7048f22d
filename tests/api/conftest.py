"""The in-process API with a fresh key of every scope but admin."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import app
from mec_platform import keys
from mec_platform.db import session_scope


@pytest.fixture
def client(embedded):
    with session_scope() as s:
        _, plain = keys.create(s, "routes")
    with TestClient(app, headers={"Authorization": f"Bearer {plain}"}) as c:
        c.key = plain
        yield c
