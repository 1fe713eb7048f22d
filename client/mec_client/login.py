"""Where the client finds the API and its key: arguments, MEC_API_URL / MEC_API_KEY, the file
`mec login` writes, or the API that `mec up` left running."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mec_client.transport import HTTPTransport, TransportError

API_PORT = 8000  # where `mec up` starts the API unless told otherwise
DEFAULT_URL = f"http://127.0.0.1:{API_PORT}"


def config_path() -> Path:
    """Where `mec login` keeps the URL and key (MEC_CLIENT_CONFIG overrides)."""
    default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "mec" / \
        "client.json"
    return Path(os.environ.get("MEC_CLIENT_CONFIG", default))


def saved_login() -> dict[str, str]:
    path = config_path()
    return json.loads(path.read_text()) if path.exists() else {}


def save_login(url: str, key: str) -> Path:
    """Write the URL and key for later commands, readable by the user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "key": key}, f)
    return path


def stack_url(data_dir: Path | None = None) -> str | None:
    """The URL of the API that `mec up` started with `data_dir` (MEC_DATA_DIR, else
    ./mec-data), read from the ports file it keeps there; None when there is none, or when
    that API does not answer its health check."""
    data_dir = data_dir or Path(os.environ.get("MEC_DATA_DIR", "mec-data"))
    try:
        port = int(json.loads((data_dir / "run" / "ports.json").read_text())["api"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = f"http://127.0.0.1:{port}"
    transport = HTTPTransport(url, timeout=2, headers={})
    try:
        return url if transport.request("GET", "/healthz").status == 200 else None
    except TransportError:
        return None
    finally:
        transport.close()
