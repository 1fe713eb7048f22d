"""This worker process: its name, the owner string of each claim it makes, and the flag
a warm shutdown raises."""

from __future__ import annotations

import os
import socket
import threading
import uuid

shutting_down = threading.Event()  # SIGTERM: hand the running job over, don't finish it


def worker_name() -> str:
    """The name the worker registers under (MEC_WORKER_NAME, else host:pid)."""
    return os.environ.get("MEC_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}")


def new_owner() -> str:
    """A unique lease owner for one claim: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
