"""Schemathesis' extension for our document (schemathesis.toml names it): how a generated
NDJSON body (a gallery import, described as a string of lines) goes on the wire."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(_context, value) -> bytes:
    return value.encode() if isinstance(value, str) else (json.dumps(value) + "\n").encode()
