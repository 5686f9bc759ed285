"""The endpoint backend against a real OpenAI-compatible server someone else wrote:
`transformers serve` (the `transformers[serving]` extra) serving a tiny random Qwen2.5-VL on
127.0.0.1, started once for this module (tests/support/serve.py). Memes go through the job
runner with concurrency; answers, the server's own errors, extreme image shapes and a server
that goes away mid-run are checked on what the real server does. Faults this server cannot be
made to produce (429 + Retry-After, malformed JSON, logprobs) are in test_vlm_endpoint.py."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.support.serve import TransformersServe
from tests.support.tiny_models import tiny_model_dir
from workbench.predictors import make_predictor
from workbench.predictors.base import PredictInput, PredictorStep
from workbench.predictors.vlm_endpoint import VlmEndpointPredictor
from workbench.runs.runner import run_step
from workbench.store.demo_memes import render_meme
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, ModelRun, Prediction

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
    reason="transformers serve needs the transformers[serving] extra (fastapi, uvicorn)")


@pytest.fixture(scope="module")
def server() -> Iterator[TransformersServe]:
    with TransformersServe(tiny_model_dir("qwen2_5_vl")) as running:
        yield running


def endpoint(server: TransformersServe, **options: Any) -> VlmEndpointPredictor:
    options = {"endpoint": server.url, "model": server.model, "backoff_s": 0.05, "timeout_s": 60.0,
               "max_new_tokens": 8, **options}
    predictor = make_predictor("vlm", **options)
    assert isinstance(predictor, VlmEndpointPredictor)
    return predictor


def run(settings, predictor, ids, **kwargs):
    return run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                    lock_dir=settings.artefacts_dir, **{"batch_size": 4, **kwargs})


def stored(session, run_id: int) -> list[Prediction]:
    session.expire_all()
    rows = list(session.scalars(select(Prediction).where(Prediction.run_id == run_id).order_by(Prediction.image_id)))
    session.commit()  # end the read transaction so the next job can write
    return rows


def test_memes_are_predicted_concurrently_and_the_answers_stored(settings, session, server, make_memes) -> None:
    ids = make_memes(n=6, seed=3, size=(200, 150))
    summary = run(settings, endpoint(server, concurrency=4), ids, batch_size=3)
    assert (summary.status, summary.done, summary.failed) == ("done", 6, 0), (summary.errors, server.log_tail())
    rows = stored(session, summary.run_id)
    assert len(rows) == 6 and all(r.error is None for r in rows)
    for row in rows:  # a random tiny model answers nonsense (often empty text), but a real answer it is
        assert isinstance(row.raw_output, str) and row.label in ("toxic", "non_toxic", "unknown")
        assert row.extra["usage"]["prompt_tokens"] > 20 and row.extra["finish_reason"] in ("stop", "length")
        assert row.extra["attempts"] >= 1 and row.latency_ms > 0
    assert session.get(ModelRun, summary.run_id).params["backend"] == "endpoint"
    session.commit()
    again = run(settings, endpoint(server, concurrency=4), ids)  # a re-run asks the server nothing
    assert (again.run_id, again.done, again.skipped) == (summary.run_id, 0, 6)


def test_label_mode_learns_that_the_server_takes_no_constrained_choice(settings, session, server, make_memes) -> None:
    ids = make_memes(n=3, seed=4, size=(120, 90))
    predictor = endpoint(server, mode="label", concurrency=1)
    summary = run(settings, predictor, ids)
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    # transformers serve refuses both constrained-choice fields with a 422 that names them:
    # each was dropped once, and the rest of the run asked plainly.
    assert predictor._choice_styles == [None]
    assert all(r.error is None for r in stored(session, summary.run_id))


def test_extreme_shapes_reach_the_server_letterboxed(settings, session, server) -> None:
    folder = settings.memes_dir / "uploads"
    folder.mkdir()
    for name, size in (("banner.png", (10000, 40)), ("tower.png", (40, 10000)), ("plain.png", (300, 200))):
        render_meme("очень длинный мем", seed=1, size=size).save(folder / name)
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Image.id).order_by(Image.path)))
    session.commit()
    summary = run(settings, endpoint(server, concurrency=3), ids)
    assert (summary.done, summary.failed) == (3, 0), (summary.errors, server.log_tail())
    fits = {session.get(Image, r.image_id).path.split("/")[-1]: r.extra.get("image_fit")
            for r in stored(session, summary.run_id)}
    session.commit()
    assert fits["plain.png"] is None  # an ordinary meme is sent as it is
    for name in ("banner.png", "tower.png"):
        fit = fits[name]
        assert fit["aspect"] == 250.0 and fit["original"] in ([10000, 40], [40, 10000])
        width, height = fit["size"]
        assert max(width, height) == 1280 and max(width, height) / min(width, height) <= 200


def test_an_unfitted_banner_gets_the_servers_own_error_twice_not_four_times(server) -> None:
    """Without fitting, the server's Qwen processor refuses the 250:1 banner with a bare 500;
    the identical second answer ends the retries."""
    banner = render_meme("баннер", size=(10000, 40))
    predictor = endpoint(server, retries=3)
    out = predictor.predict([PredictInput(1, banner, "", fit={})])[0]  # fit={}: "already prepared", sent as is
    assert out.label == "unknown" and out.error.startswith("HTTP 500: Internal Server Error (")
    assert "the same answer twice" in out.error
    # 2 attempts; 3 when the server's dropped keep-alive connection costs one (a connection error)
    attempts = int(re.search(r"\((\d+) attempts", out.error).group(1))
    assert attempts in (2, 3)


def test_client_errors_store_the_servers_message_and_are_not_retried(settings, session, server, make_memes) -> None:
    ids = make_memes(n=2, seed=6, size=(96, 96))
    base = server.url.removesuffix("/v1")  # a base URL without /v1: the server answers 404 Not Found
    summary = run(settings, endpoint(server, endpoint=base, retries=3), ids)
    assert (summary.status, summary.failed) == ("done", 2)
    rows = stored(session, summary.run_id)
    assert all(r.error == f"HTTP 404 from {base}/chat/completions: Not Found" for r in rows)
    assert all(r.extra == {} for r in rows)
    wrong = run(settings, endpoint(server, model="some-other-model"), ids)
    assert wrong.status == "failed" and f"serves {server.model}, not it" in wrong.error


def test_a_server_stopped_mid_run_leaves_per_meme_errors_and_the_next_run_redoes_only_those(
        settings, session, server, make_memes) -> None:
    ids = make_memes(n=8, seed=8, size=(96, 96))
    stopped: list[int] = []

    def stop_after_first_batch(progress) -> None:
        if progress.processed >= 2 and not stopped:
            server.stop()
            stopped.append(progress.processed)

    try:
        first = run(settings, endpoint(server, retries=1, concurrency=2), ids, batch_size=2,
                    on_progress=stop_after_first_batch)
    finally:
        if server.process is None:
            server.start()
    assert stopped == [2] and first.status == "done"
    assert (first.done, first.failed) == (2, 6), first.errors
    rows = stored(session, first.run_id)
    failed = [r for r in rows if r.error]
    assert len(failed) == 6 and all("connection error" in r.error and "(2 attempts" in r.error for r in failed)
    second = run(settings, endpoint(server, retries=1, concurrency=2), ids, batch_size=2)
    assert (second.run_id, second.done, second.skipped, second.failed) == (first.run_id, 6, 2, 0), second.errors
    assert all(r.error is None for r in stored(session, second.run_id))
