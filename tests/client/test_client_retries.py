"""The client's retry rules, against a fake transport that answers from a script: what is
sent again (429s; connection errors of calls safe to repeat) and what is not."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

from mec_client import APIError, Client, TransportError
from mec_client.transport import Response

JOB = {"id": 7, "kind": "pretrain", "name": "", "tags": [], "priority": 0, "queue": "gpu",
       "status": "queued", "config": {}, "parent_id": None,
       "progress": {"step": 0, "total_steps": None, "epoch": 0, "steps_per_epoch": None,
                    "percent": 0.0},
       "eta_seconds": None, "last_metrics": None, "result": None, "error": None,
       "waiting": None, "cancel_requested": False, "attempts": 0, "resumes": 0,
       "checkpoint": None, "worker_host": None, "device": None,
       "created_at": "2026-12-04T12:00:00", "started_at": None, "finished_at": None}


def answer(status: int, body=None, **headers: str) -> Response:
    content = b"" if body is None else (body if isinstance(body, bytes) else
                                        json.dumps(body).encode())
    return Response(status, "", {k.replace("_", "-"): v for k, v in headers.items()}, content)


class Script:
    """Answers requests in order from `steps` (a Response, or an exception to raise) and
    records each request it was sent."""

    def __init__(self, *steps, streams=()) -> None:
        self.steps, self.streams, self.sent = list(steps), list(streams), []

    def request(self, method, path, params=None, headers=None, body=None):
        self.sent.append((method, path, params, headers, body))
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    @contextmanager
    def stream(self, method, path, params=None):
        self.sent.append((method, path, dict(params), None, None))
        status, lines = self.streams.pop(0)
        yield answer(status), iter(lines)

    def close(self) -> None:
        pass


@pytest.fixture
def sleeps(monkeypatch):
    waited = []
    monkeypatch.setattr("mec_client.client.time.sleep", waited.append)
    return waited


def client(script: Script, retries: int = 3) -> Client:
    return Client("http://api", "key", retries=retries, backoff=0.5, transport=script)


def test_a_429_is_waited_out_for_its_retry_after(sleeps):
    script = Script(answer(429, {"detail": "slow down"}, retry_after="2"), answer(200, JOB))
    assert client(script).job(7).id == 7
    assert sleeps == [2.0] and len(script.sent) == 2


def test_a_429_past_the_retries_is_an_api_error(sleeps):
    script = Script(*[answer(429, {"detail": "slow down"}, retry_after="1")] * 3)
    with pytest.raises(APIError) as refused:
        client(script, retries=2).job(7)
    assert refused.value.status == 429 and refused.value.detail == "slow down"
    assert len(script.sent) == 3 and sleeps == [1.0, 1.0]


def test_a_read_is_sent_again_after_a_broken_connection_with_backoff(sleeps):
    broken = TransportError("reset", unsent=False)
    script = Script(broken, broken, answer(200, JOB))
    assert client(script).job(7).id == 7
    assert sleeps == [0.5, 1.0]


def test_a_write_that_may_have_been_done_is_not_sent_again(sleeps):
    script = Script(TransportError("reset after sending", unsent=False), answer(200, JOB))
    with pytest.raises(TransportError):
        client(script).cancel(7)
    assert len(script.sent) == 1 and sleeps == []


def test_a_write_whose_connection_never_opened_is_sent_again(sleeps):
    script = Script(TransportError("refused", unsent=True), answer(200, JOB))
    assert client(script).cancel(7).id == 7
    assert [s[0] for s in script.sent] == ["POST", "POST"]


def test_a_submit_is_repeated_with_the_same_idempotency_key(sleeps):
    script = Script(TransportError("reset after sending", unsent=False), answer(201, JOB))
    client(script).submit({"kind": "pretrain", "config": {}})
    keys = [s[3]["Idempotency-Key"] for s in script.sent]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32
    assert json.loads(script.sent[0][4]) == {"kind": "pretrain", "config": {}}


def test_retries_give_up_with_the_last_error(sleeps):
    script = Script(*[TransportError("down", unsent=True)] * 4)
    with pytest.raises(TransportError, match="down"):
        client(script).jobs()
    assert len(script.sent) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_an_error_answer_carries_its_detail_or_its_text(sleeps):
    script = Script(answer(404, {"detail": "job 7 not found"}), answer(502, b"Bad Gateway"))
    with pytest.raises(APIError, match="404: job 7 not found"):
        client(script).job(7)
    with pytest.raises(APIError, match="502: Bad Gateway"):
        client(script).job(7)


def test_a_followed_log_cut_short_resumes_after_the_last_line_seen(sleeps):
    line = {"attempt": 1, "time": "2026-12-04T12:00:00", "source": "worker"}
    events = lambda *ids: [f"data: {json.dumps(line | {'id': i, 'line': f'l{i}'})}\n"
                           for i in ids]
    script = Script(streams=[(200, [e for e in events(1, 2) for e in (e, "")]),
                             (200, [e for e in events(3) for e in (e, "")] +
                              ["event: end", "data: {}", ""])])
    original = script.stream

    @contextmanager
    def cut_after_two(method, path, params=None):
        with original(method, path, params) as (response, lines):
            def broken():
                yield from lines
                if len(script.sent) == 1:
                    raise TransportError("cut", unsent=False)
            yield response, broken()

    script.stream = cut_after_two
    got = [x.line for x in client(script).logs(7, follow=True)]
    assert got == ["l1", "l2", "l3"]
    assert [s[2]["since"] for s in script.sent] == [0, 2] and sleeps == [1.0]
