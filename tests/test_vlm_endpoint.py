"""The endpoint backend against a hand-written chat-completions stub, for what the real server
we can run here (transformers serve, test_vlm_server.py) cannot be made to do:
- send token logprobs (-> prob_toxic) and let us see the request and its headers;
- fail transiently (503 then 200, 429 with Retry-After, a server slower than the timeout);
- answer 200 with malformed JSON, or a vLLM-style 500 naming a validation error;
- behave like other servers: an older vLLM taking `guided_choice` but not `structured_outputs`,
  one refusing logprobs.
Everything a real server does (answers, its 4xx/500 messages, extreme shapes, going away
mid-run) is tested against the real one."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from workbench.predictors import make_predictor
from workbench.predictors.base import PredictInput, PredictorStep
from workbench.predictors.vlm_endpoint import VlmEndpointPredictor, class_probs_from_logprobs
from workbench.runs.runner import run_step
from workbench.store.demo_memes import render_meme
from workbench.store.schema import ModelRun, Prediction

MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
ANSWER = "Класс: токсичный\nОбъяснение: мем высмеивает людей."
# Top alternatives at the class word: " ток" (toxic) vs " ней" / " не" (non-toxic).
TOP = [{"token": " ток", "logprob": -0.2}, {"token": " ней", "logprob": -1.8}, {"token": " не", "logprob": -4.0},
       {"token": " Это", "logprob": -5.0}]
EXPECTED_PROB = math.exp(-0.2) / (math.exp(-0.2) + math.exp(-1.8) + math.exp(-4.0))


def completion(content: str = ANSWER, logprobs: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "cmpl-1", "object": "chat.completion", "model": MODEL, "choices": [{
        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312}}
    if logprobs:
        body["choices"][0]["logprobs"] = {"content": [
            {"token": "Класс", "logprob": -0.01, "top_logprobs": [{"token": "Класс", "logprob": -0.01}]},
            {"token": ":", "logprob": 0.0, "top_logprobs": [{"token": ":", "logprob": 0.0}]},
            {"token": " ток", "logprob": -0.2, "top_logprobs": TOP},
        ]}
    return body


RAW_BODY = b"raw:"  # a reply payload starting with it is sent as the bytes after it (malformed JSON)


class ChatServer:
    """A chat-completions server on 127.0.0.1; `reply(body, n)` -> (status, json, delay_s[,
    headers]) decides each POST's answer (n counts POSTs from 1). Requests are recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models = [MODEL]
        self.reply: Callable[[dict[str, Any], int], tuple[int, Any, float]] = lambda body, n: (200, completion(), 0.0)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload[len(RAW_BODY):] if isinstance(payload, bytes) else json.dumps(
                    payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.requests)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                status, payload, delay, *headers = server.reply(body, n)
                time.sleep(delay)
                self._send(status, payload, *headers)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


@pytest.fixture
def memes(make_memes) -> list[int]:
    return make_memes(n=4, seed=5, size=(200, 150))


def one_item() -> PredictInput:
    return PredictInput(1, render_meme("мем", size=(64, 64)), "")


def record_sleeps(monkeypatch) -> list[float]:
    """Waits between attempts (tenacity sleeps through time.sleep), recorded and still slept."""
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if seconds:  # the server's reply delay is 0
            waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return waits


def endpoint_predictor(server: ChatServer, **options: Any) -> VlmEndpointPredictor:
    options = {"endpoint": server.url, "model": MODEL, "backoff_s": 0.01, **options}
    predictor = make_predictor("vlm", **options)
    assert isinstance(predictor, VlmEndpointPredictor)
    return predictor


def run(settings, predictor, ids):
    return run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                    lock_dir=settings.artefacts_dir, batch_size=8)


def stored(session, run_id: int) -> list[Prediction]:
    session.expire_all()
    rows = list(session.scalars(select(Prediction).where(Prediction.run_id == run_id).order_by(Prediction.image_id)))
    session.commit()  # end the read transaction (SQLite BEGIN IMMEDIATE) so the next job can write
    return rows


def test_request_shape_and_stored_predictions(settings, session, memes, server, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_VLM_API_KEY", "sk-test-123")
    summary = run(settings, endpoint_predictor(server), memes)
    assert (summary.status, summary.done, summary.failed) == ("done", 4, 0), summary.errors
    assert len(server.requests) == 4
    for body, headers in zip(server.requests, server.headers, strict=True):
        assert body["model"] == MODEL and body["temperature"] == 0 and body["logprobs"] is True
        assert body["max_tokens"] == 96 and "structured_outputs" not in body  # generate mode: free answer
        image_part, text_part = body["messages"][0]["content"]
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        decoded = PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.format == "JPEG" and decoded.size == (200, 150)
        assert text_part["type"] == "text" and "Ты — модератор контента" in text_part["text"]
        assert headers["Authorization"] == "Bearer sk-test-123"
    assert sum("«Когда пятница, а ты на работе»" in b["messages"][0]["content"][1]["text"] for b in server.requests) == 1
    rows = stored(session, summary.run_id)
    assert [r.label for r in rows] == ["toxic"] * 4
    assert all(r.prob_toxic == pytest.approx(EXPECTED_PROB) for r in rows)
    assert rows[0].explanation == "мем высмеивает людей." and rows[0].raw_output == ANSWER
    assert rows[0].extra["attempts"] == 1 and rows[0].extra["usage"]["total_tokens"] == 312
    params = session.get(ModelRun, summary.run_id).params
    assert params["backend"] == "endpoint" and params["endpoint"] == server.url
    assert "sk-test-123" not in json.dumps(params)  # the key is never stored with the run


def test_retries_5xx_then_succeeds(settings, session, memes, server) -> None:
    server.reply = lambda body, n: (503, {"error": {"message": "overloaded"}}, 0.0) if n <= 2 else (200, completion(), 0.0)
    summary = run(settings, endpoint_predictor(server, concurrency=1, retries=3), memes[:1])
    assert (summary.done, summary.failed) == (1, 0)
    assert len(server.requests) == 3
    assert stored(session, summary.run_id)[0].extra["attempts"] == 3


def test_persistent_503_is_retried_then_stored_as_an_error(settings, session, memes, server) -> None:
    server.reply = lambda body, n: (503, {"error": {"message": "overloaded"}}, 0.0)
    summary = run(settings, endpoint_predictor(server, retries=2), memes[:2])
    assert (summary.status, summary.done, summary.failed) == ("done", 0, 2)
    assert len(server.requests) == 6  # 1 + 2 retries each
    rows = stored(session, summary.run_id)
    assert all(r.label == "unknown" and "HTTP 503: overloaded (3 attempts" in r.error for r in rows)


@pytest.mark.parametrize(("message", "attempts", "needle"), [
    # vLLM-style: the 500's body names a validation error -> it will fail the same way: not retried
    ("ValueError: absolute aspect ratio must be smaller than 200, got 250.0", 1, "not retried"),
    # no hint in the body: retried once; the same answer again ends it
    ("CUDA error: an illegal memory access was encountered", 2, "the same answer twice"),
])
def test_a_500_that_will_repeat_is_not_retried_four_times(server, message, attempts, needle) -> None:
    server.reply = lambda body, n: (500, {"error": {"message": message}}, 0.0)
    out = endpoint_predictor(server, retries=3).predict([one_item()])[0]
    assert len(server.requests) == attempts
    assert out.error.startswith(f"HTTP 500: {message}") and needle in out.error


def test_a_500_that_changes_is_retried_to_the_end(server) -> None:
    server.reply = lambda body, n: (500, {"error": {"message": f"worker {n} crashed"}}, 0.0)
    out = endpoint_predictor(server, retries=2).predict([one_item()])[0]
    assert len(server.requests) == 3 and out.error.startswith("HTTP 500: worker 3 crashed (3 attempts")


def test_retry_after_is_honoured(server, monkeypatch) -> None:
    replies = [(429, {"error": {"message": "slow down"}}, 0.0, {"Retry-After": "0.3"}),
               (503, {"error": {"message": "busy"}}, 0.0, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    server.reply = lambda body, n: replies[n - 1] if n <= len(replies) else (200, completion(), 0.0)
    waits = record_sleeps(monkeypatch)
    out = endpoint_predictor(server, concurrency=1, retries=3, backoff_s=0.01).predict([one_item()])[0]
    assert out.error is None and out.extra["attempts"] == 3
    assert waits == pytest.approx([0.3, 0.02])  # Retry-After when longer than the backoff; a past date: the backoff


def test_malformed_json_is_retried_then_stored(server) -> None:
    server.reply = lambda body, n: (200, RAW_BODY + b"{not json", 0.0)
    out = endpoint_predictor(server, retries=1).predict([one_item()])[0]
    assert len(server.requests) == 2 and out.label == "unknown"
    assert out.error.startswith("the endpoint answered 200 with invalid JSON (2 attempts")
    server.requests.clear()
    server.reply = lambda body, n: (200, RAW_BODY + b"{not json", 0.0) if n == 1 else (200, completion(), 0.0)
    out = endpoint_predictor(server, retries=1).predict([one_item()])[0]
    assert out.error is None and out.extra["attempts"] == 2


def test_backoff_doubles_from_backoff_s_and_429_is_retried(server, monkeypatch) -> None:
    replies = [(429, {"error": {"message": "slow down"}}, 0.0), (503, {"error": {"message": "busy"}}, 0.0),
               (502, {"error": {"message": "bad gateway"}}, 0.0)]
    server.reply = lambda body, n: replies[n - 1] if n <= len(replies) else (200, completion(), 0.0)
    waits = record_sleeps(monkeypatch)
    item = one_item()
    out = endpoint_predictor(server, concurrency=1, retries=3, backoff_s=0.05).predict([item])[0]
    assert out.error is None and out.extra["attempts"] == 4
    assert waits == pytest.approx([0.05, 0.1, 0.2])
    server.reply = lambda body, n: (429, {"error": {"message": "slow down"}}, 0.0)
    out = endpoint_predictor(server, retries=0).predict([item])[0]
    assert out.error == f"HTTP 429: slow down (1 attempts to {server.url}/chat/completions)"


def test_timeouts_are_stored_errors_and_retried_on_the_next_run(settings, session, memes, server) -> None:
    server.reply = lambda body, n: (200, completion(), 2.0)  # slower than the timeout
    predictor = endpoint_predictor(server, timeout_s=0.3, retries=1)
    t0 = time.monotonic()
    summary = run(settings, predictor, memes)
    assert time.monotonic() - t0 < 6  # 4 in parallel, 2 attempts of 0.3 s each, no 2 s waits
    assert (summary.status, summary.failed) == ("done", 4)
    rows = stored(session, summary.run_id)
    assert len(rows) == 4 and all("timed out after 0.3 s (2 attempts" in r.error for r in rows)
    server.reply = lambda body, n: (200, completion(), 0.0)  # the server recovers: failed items are redone
    again = run(settings, endpoint_predictor(server, timeout_s=0.3, retries=1), memes)
    assert (again.run_id, again.done, again.skipped) == (summary.run_id, 4, 0)
    assert all(r.error is None and r.label == "toxic" for r in stored(session, again.run_id))


def test_label_mode_constrained_choice_falls_back_to_what_the_server_takes(settings, session, memes, server) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        if "structured_outputs" in body:  # an older vLLM: only guided_choice
            return 400, {"error": {"message": "extra fields not permitted: structured_outputs"}}, 0.0
        assert body["guided_choice"] == ["токсичный", "нейтральный"] and body["max_tokens"] == 16
        return 200, completion(content="нейтральный", logprobs=False), 0.0

    server.reply = reply
    summary = run(settings, endpoint_predictor(server, mode="label", concurrency=1), memes)
    assert (summary.done, summary.failed) == (4, 0)
    assert sum("structured_outputs" in b for b in server.requests) == 1  # learned once, then remembered
    rows = stored(session, summary.run_id)
    assert all(r.label == "non_toxic" and r.prob_toxic is None for r in rows)  # no logprobs: label from text


def test_logprobs_rejected_are_dropped(settings, session, memes, server) -> None:
    server.reply = lambda body, n: ((400, {"error": {"message": "logprobs are not supported"}}, 0.0)
                                    if body.get("logprobs") else (200, completion(logprobs=False), 0.0))
    summary = run(settings, endpoint_predictor(server, concurrency=1), memes[:2])
    assert (summary.done, summary.failed) == (2, 0)
    assert [bool(b.get("logprobs")) for b in server.requests] == [True, False, False]


def test_unreachable_endpoint_fails_clearly_and_stores_nothing(settings, session, memes) -> None:
    dead = make_predictor("vlm", endpoint="http://127.0.0.1:9/v1", model=MODEL, timeout_s=1)
    summary = run(settings, dead, memes)
    assert summary.status == "failed" and "does not answer" in summary.error and MODEL in summary.error
    assert session.scalar(select(func.count()).select_from(Prediction)) == 0


def test_endpoint_from_env_and_bad_url(monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_VLM_ENDPOINT", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("WORKBENCH_VLM_ENDPOINT_MODEL", "served-name")
    predictor = make_predictor("vlm")
    assert isinstance(predictor, VlmEndpointPredictor) and predictor.config()["model"] == "served-name"
    from workbench.predictors.vlm import LocalVlmPredictor

    assert isinstance(make_predictor("vlm", endpoint="local"), LocalVlmPredictor)  # forced local despite the env
    with pytest.raises(ValueError, match="http"):
        make_predictor("vlm", endpoint="gpu-box:8000")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, {"error": {"message": "CUDA out of memory", "type": "InternalServerError"}}, "CUDA out of memory"),
    (400, {"error": "model not loaded"}, "model not loaded"),
    (400, {"detail": "Server is pinned to 'a'; requested 'b'."}, "Server is pinned to 'a'; requested 'b'."),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]},
     "messages: Field required"),
    (503, {"message": "try later"}, "try later"),
    (500, "Internal Server Error", "Internal Server Error"),
    (502, "", "Bad Gateway"),
])
def test_error_detail_is_the_servers_own_message(status, body, expected) -> None:
    import httpx

    from workbench.predictors.vlm_endpoint import error_detail

    response = httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)
    assert error_detail(response) == expected


@pytest.mark.parametrize(("logprobs", "expected"), [
    (None, (0.0, 0.0)),
    ({"content": []}, (0.0, 0.0)),
    ({"content": [{"token": "токсичный", "logprob": -0.1, "top_logprobs": []}]}, (math.exp(-0.1), 0.0)),
    ({"content": [{"token": "Ней", "logprob": -0.5, "top_logprobs": [
        {"token": "Ней", "logprob": -0.5}, {"token": "Токс", "logprob": -1.0}]}]}, (math.exp(-1.0), math.exp(-0.5))),
])
def test_class_probs_from_logprobs(logprobs, expected) -> None:
    got = class_probs_from_logprobs(logprobs, "токсичный", "нейтральный")
    assert got == pytest.approx(expected)


def test_a_400_naming_no_extra_is_this_memes_error_and_nothing_is_unlearned(server) -> None:
    message = "This model's maximum context length is 32768 tokens"
    server.reply = lambda body, n: (400, {"error": {"message": message}}, 0.0)
    predictor = endpoint_predictor(server, retries=3)
    out = predictor.predict([one_item()])[0]
    # asked once more without extras (is it them or the request?), then stored; logprobs stay on
    assert [bool(b.get("logprobs")) for b in server.requests] == [True, False]
    assert out.error == f"HTTP 400: {message}" and predictor._logprobs_ok
