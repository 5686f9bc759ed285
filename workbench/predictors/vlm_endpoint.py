"""The VLM moderator on an OpenAI-compatible chat-completions server (vLLM, Ollama, ...).

`vllm serve Qwen/Qwen2.5-VL-3B-Instruct` on a GPU box (or `transformers serve`), then point
the workbench at `http://host:8000/v1`. Each meme is one request: the image as a base64 JPEG
data URL plus the moderation prompt. The image is first fitted to what a Qwen2-VL-style
server's processor takes (`prepare_image`: longest side `image_max_side`, aspect ratio
letterboxed to ≤ 200:1, which the processor refuses above) and encoded in the job runner's
prefetch threads.

Requests run `concurrency` at a time. Failures that may pass (429, 502/503/504, timeouts,
connection errors, a bare 500) are retried with exponential backoff, or after the server's
`Retry-After` when it sends a longer one (up to a minute); failures that will
repeat are not: a 4xx, a 500 whose body names a validation error, and a 500 that came back
with the same message twice. What still fails becomes that meme's stored error, with the
server's own message from the response body (`{"error": {"message"}}`, FastAPI's
`{"detail"}`, or the text). Where the server takes them, the request asks for
- a constrained answer in "label" mode (vLLM `structured_outputs: {choice: [...]}`, older
  vLLM `guided_choice`); a server that rejects one (HTTP 400/422, preferably naming it) is
  asked again without it, and that is remembered;
- token logprobs: the top alternatives at the class word give `prob_toxic`.
The API key comes from the environment (WORKBENCH_VLM_API_KEY or OPENAI_API_KEY) and is
never stored with the run.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from workbench.errors import ModelUnavailable
from workbench.models.image_limits import IMAGE_FIT_VERSION, endpoint_limits, fit_image
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput, note_fits, prepare_inputs
from workbench.predictors.vlm_parse import parse_answer
from workbench.predictors.vlm_prompt import (
    COMMON_OPTIONS,
    MODE_LABEL,
    prob_from_top_logprobs,
    prob_toxic,
    render_prompt,
    set_common_options,
)

LABEL_MODE_MAX_TOKENS = 16  # «Класс: нейтральный» and a little slack
TOP_LOGPROBS = 20  # OpenAI's maximum; vLLM's default --max-logprobs
# Ways to ask for a constrained choice, newest vLLM first; None = plain request.
CHOICE_STYLES = ("structured_outputs", "guided_choice", None)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
REJECT_STATUS = {400, 422}  # the body was refused: maybe an extra the server does not know
# A 500 whose message says the input itself is wrong fails the same way on every attempt.
DETERMINISTIC_500 = re.compile(r"validation|invalid|valueerror|typeerror|must be|not supported|unsupported|"
                               r"aspect ratio|too (?:long|large|many|small)|exceed", re.IGNORECASE)
MAX_ERROR_CHARS = 1000
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this

ENDPOINT_OPTIONS: tuple[Option, ...] = (
    Option("timeout_s", 120.0, "seconds per request before it counts as timed out", "float"),
    Option("retries", 3, "retries of a request after 429 / 5xx / connection errors / timeouts (never for failures "
           "that repeat: a 4xx, a 500 naming a validation error, the same 500 twice)", "int"),
    Option("backoff_s", 1.0, "wait before the first retry; doubles each time", "float"),
    Option("concurrency", 4, "requests in flight at once", "int"),
    Option("constrained", True, "label mode: ask the server to answer only with a class word (if supported)", "bool"),
    Option("logprobs", True, "ask for token logprobs to get prob_toxic (if supported)", "bool"),
    Option("image_max_side", 1280, "downscale images to this longest side before sending (0 = as is)", "int"),
)


class EndpointError(RuntimeError):
    """A request that failed for good (after retries)."""


class VlmEndpointPredictor(Predictor):
    """Qwen2.5-VL (or any VLM) behind an OpenAI-compatible /chat/completions endpoint."""

    kind = "vlm"
    title = "VLM moderator (OpenAI-compatible endpoint, e.g. vLLM)"
    options = COMMON_OPTIONS + ENDPOINT_OPTIONS
    needs_ocr_text = True

    def __init__(self, model: str, endpoint: str, mode: str, prompt: str, toxic_word: str, non_toxic_word: str,
                 answer_prefix: str, use_ocr_text: bool, max_new_tokens: int, threshold: float,
                 timeout_s: float, retries: int, backoff_s: float, concurrency: int, constrained: bool,
                 logprobs: bool, image_max_side: int, api_key: str | None = None) -> None:
        from workbench.config import load_settings

        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL such as http://host:8000/v1 (got {endpoint!r})")
        self.endpoint = endpoint.rstrip("/")
        set_common_options(self, model, mode, prompt, toxic_word, non_toxic_word, answer_prefix, use_ocr_text,
                           max_new_tokens, threshold)
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.concurrency = max(1, int(concurrency))
        self.constrained = bool(constrained)
        self.want_logprobs = bool(logprobs)
        self.image_max_side = max(0, int(image_max_side))
        self._api_key = api_key if api_key is not None else load_settings().vlm_api_key
        # What the server turned out to accept (learned on the first rejection, per process).
        self._choice_styles = list(CHOICE_STYLES) if self.constrained and mode == MODE_LABEL else [None]
        self._logprobs_ok = self.want_logprobs
        self._learn_lock = threading.Lock()
        self._client: Any = None

    # ----------------------------------------------------------------- identity

    def config(self) -> dict[str, Any]:
        config = {
            "backend": "endpoint", "endpoint": self.endpoint, "model": self.model_name, "mode": self.mode,
            "prompt": self.prompt, "toxic_word": self.toxic_word, "non_toxic_word": self.non_toxic_word,
            "use_ocr_text": self.use_ocr_text, "threshold": self.threshold, "constrained": self.constrained,
            "logprobs": self.want_logprobs, "image_max_side": self.image_max_side, "image_fit": IMAGE_FIT_VERSION,
        }
        config["max_new_tokens"] = LABEL_MODE_MAX_TOKENS if self.mode == MODE_LABEL else self.max_new_tokens
        return config

    # ----------------------------------------------------------------- connection

    def load(self) -> None:
        """Open the HTTP client and check the server answers (GET /models) and serves the model."""
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.Client(
                headers=headers, timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                limits=httpx.Limits(max_connections=self.concurrency), trust_env=False)
        try:
            response = self._client.get(f"{self.endpoint}/models")
        except httpx.HTTPError as exc:
            raise ModelUnavailable(self.model_name, f"the endpoint {self.endpoint} does not answer ({type(exc).__name__}: "
                                   f"{exc})", "Start the server (e.g. `vllm serve Qwen/Qwen2.5-VL-3B-Instruct`) "
                                   "or fix the URL; it must end with /v1.") from None
        if response.status_code in (401, 403):
            raise ModelUnavailable(self.model_name, f"the endpoint refused the API key (HTTP {response.status_code})",
                                   "Set WORKBENCH_VLM_API_KEY (or OPENAI_API_KEY) to the server's key.")
        if response.status_code == 200:  # servers without /models are fine; those with it must list the model
            try:
                served = [m.get("id") for m in response.json().get("data", [])]
            except (ValueError, AttributeError):
                served = []
            if served and self.model_name not in served:
                raise ModelUnavailable(self.model_name, f"the endpoint serves {', '.join(map(str, served))}, not it",
                                       "Pass --model with one of those names (WORKBENCH_VLM_ENDPOINT_MODEL).")

    # ----------------------------------------------------------------- predicting

    def prepare_image(self, image: Any) -> tuple[Any, dict[str, Any]]:
        return fit_image(image, endpoint_limits(self.image_max_side))

    def preprocess_images(self, images: list[Any]) -> list[str]:
        """Each image as the request's data URL (JPEG encoding runs in the prefetch threads)."""
        return [image_data_url(image) for image in images]

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        if self._client is None:
            self.load()
        batch = prepare_inputs(self, batch)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch)) or 1) as pool:
            return note_fits(batch, list(pool.map(self._predict_one, batch)))

    def prompt_for(self, item: PredictInput) -> str:
        ocr = item.ocr_text if self.use_ocr_text else ""
        return render_prompt(self.prompt, ocr, self.toxic_word, self.non_toxic_word)

    def request_body(self, item: PredictInput, choice_style: str | None, logprobs: bool) -> dict[str, Any]:
        """The chat-completions JSON for one meme."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": item.pixels if isinstance(item.pixels, str)
                                                     else image_data_url(item.image, self.image_max_side)}},
                {"type": "text", "text": self.prompt_for(item)},
            ]}],
            "max_tokens": self.config()["max_new_tokens"],
            "temperature": 0.0,
        }
        if logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        choices = [self.toxic_word, self.non_toxic_word]
        if choice_style == "structured_outputs":
            body["structured_outputs"] = {"choice": choices}
        elif choice_style == "guided_choice":
            body["guided_choice"] = choices
        return body

    def _predict_one(self, item: PredictInput) -> PredictOutput:
        t0 = time.perf_counter()
        try:
            data, attempts = self._post_learning(item)
        except EndpointError as exc:
            return PredictOutput("unknown", error=str(exc), latency_ms=(time.perf_counter() - t0) * 1000)
        latency = (time.perf_counter() - t0) * 1000
        try:
            choice = data["choices"][0]
            text = _content_text(choice["message"].get("content"))
        except (KeyError, IndexError, TypeError, AttributeError):
            return PredictOutput("unknown", raw_output=str(data)[:2000], latency_ms=latency,
                                 error="the endpoint's answer has no choices[0].message.content")
        p_tox, p_non = class_probs_from_logprobs(choice.get("logprobs"), self.toxic_word, self.non_toxic_word)
        prob = prob_toxic(p_tox, p_non)
        parsed = parse_answer(text)
        label = parsed.label
        if self.mode == MODE_LABEL and prob is not None:
            label = "toxic" if prob >= self.threshold else "non_toxic"
        extra = {"attempts": attempts, "p_toxic_word": p_tox, "p_non_toxic_word": p_non,
                 "parsed_from": parsed.source, "finish_reason": choice.get("finish_reason"),
                 "usage": data.get("usage")}
        return PredictOutput(label, prob, parsed.explanation, text, latency, extra=extra)

    def _post_learning(self, item: PredictInput) -> tuple[dict[str, Any], int]:
        """POST with what the server accepts. A 400/422 naming an extra we asked for (a choice
        style, logprobs) drops it for good; one naming none is asked once more without extras:
        if that passes, the first extra is dropped for good, else it is this meme's error."""
        while True:
            style, logprobs = self._choice_styles[0], self._logprobs_ok
            try:
                return self._post_with_retries(self.request_body(item, style, logprobs))
            except _Rejected as exc:
                message = str(exc)
            if style is None and not logprobs:
                raise EndpointError(message)
            if not ((style is not None and style in message) or (logprobs and "logprob" in message)):
                try:  # the message names no extra: is it them, or this request itself?
                    answer = self._post_with_retries(self.request_body(item, None, False))
                except _Rejected as again:
                    raise EndpointError(str(again)) from None
                self._drop_extra(style, style is None)
                return answer
            self._drop_extra(style, style is None or style not in message)

    def _drop_extra(self, style: str | None, logprobs: bool) -> None:
        """Stop asking for `style` (when it is still the first choice style), or for logprobs."""
        with self._learn_lock:
            if logprobs:
                self._logprobs_ok = False
            elif self._choice_styles and self._choice_styles[0] == style:
                self._choice_styles.pop(0)

    def _post_with_retries(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The answer JSON and the attempts it took. Failures that may pass are retried up to
        `retries` times, waiting `backoff_s`, then twice as long each time; a 500 that comes
        back with the same message as before is not tried again."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        url = f"{self.endpoint}/chat/completions"
        seen: set[str] = set()

        def repeated(state: Any) -> bool:
            key = getattr(state.outcome.exception(), "repeat_key", None)
            if key is None:
                return False
            if key in seen:
                return True
            seen.add(key)
            return False

        backoff = wait_exponential(multiplier=self.backoff_s)

        def wait(state: Any) -> float:  # the backoff, or the server's Retry-After when longer
            asked = getattr(state.outcome.exception(), "retry_after", None) or 0.0
            return max(backoff(state), min(asked, MAX_RETRY_AFTER_S))

        retrying = Retrying(stop=stop_after_attempt(self.retries + 1) | repeated, wait=wait,
                            retry=retry_if_exception_type(_Retryable), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    data = self._post_once(url, body)
        except _Retryable as exc:
            n = attempt.retry_state.attempt_number
            again = ", the same answer twice" if exc.repeat_key and n < self.retries + 1 else ""
            raise EndpointError(f"{exc} ({n} attempts to {url}{again})") from None
        return data, attempt.retry_state.attempt_number

    def _post_once(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """One POST: the answer JSON, or _Retryable / _Rejected / EndpointError."""
        import httpx

        try:
            response = self._client.post(url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise _Retryable("the endpoint answered 200 with invalid JSON") from None
        status, detail = response.status_code, error_detail(response)
        if status == 500 and DETERMINISTIC_500.search(detail):
            raise EndpointError(f"HTTP 500: {detail} (not retried: the request itself is refused)")
        if status in RETRY_STATUS:
            raise _Retryable(f"HTTP {status}: {detail}", repeat_key=f"{status}:{detail}" if status == 500 else None,
                             retry_after=retry_after_s(response.headers.get("retry-after")))
        if status in REJECT_STATUS:
            raise _Rejected(f"HTTP {status}: {detail}")
        raise EndpointError(f"HTTP {status} from {url}: {detail}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _Rejected(Exception):
    """The server rejected the request body (HTTP 400/422): maybe an extra it does not know."""


class _Retryable(Exception):
    """A failure worth another attempt (429 / 5xx / connection error / timeout); the message
    says what happened. `repeat_key` (a 500's status + message): the same key twice means the
    failure is not going away, so no more attempts."""

    def __init__(self, message: str, repeat_key: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.repeat_key = repeat_key
        self.retry_after = retry_after


def retry_after_s(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


def image_data_url(image: Any, max_side: int = 0, quality: int = 90) -> str:
    """`image` (PIL, RGB) as a base64 JPEG data URL, downscaled to `max_side` when larger."""
    img = image.convert("RGB")
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def class_probs_from_logprobs(logprobs: Any, toxic_word: str, non_toxic_word: str) -> tuple[float, float]:
    """Class-word probabilities at the first generated token that starts a class word
    (the answer may begin with «Класс:»); (0, 0) when the server sent no logprobs."""
    content = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    if not content:
        return 0.0, 0.0
    for position in content:
        token = str(position.get("token", ""))
        top = {str(alt.get("token", "")): float(alt.get("logprob", -math.inf))
               for alt in position.get("top_logprobs") or []}
        top.setdefault(token, float(position.get("logprob", -math.inf)))
        p_tox, p_non = prob_from_top_logprobs({token: 0.0}, toxic_word, non_toxic_word)
        if p_tox or p_non:  # the chosen token starts a class word: this is the decision point
            return prob_from_top_logprobs(top, toxic_word, non_toxic_word)
    return 0.0, 0.0


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # some servers return content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def error_detail(response: Any) -> str:
    """The server's own error message from a failed response: OpenAI/vLLM's
    `{"error": {"message": ...}}`, FastAPI's `{"detail": ...}` (a validation error list becomes
    "where: what" parts), `{"message": ...}`, else the body text, else the status phrase."""
    try:
        data = response.json()
    except ValueError:
        data = None
    message: Any = data
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                message = data[key]
                break
        if isinstance(message, dict):
            message = message.get("message") or message.get("msg") or message
    if isinstance(message, list):  # FastAPI/pydantic: [{"loc": [...], "msg": "..."}, ...]
        message = "; ".join(_validation_part(part) for part in message)
    text = " ".join(str(message if data is not None else response.text).split())
    if not text:
        text = getattr(response, "reason_phrase", "") or "(empty body)"
    return text[:MAX_ERROR_CHARS] + ("…" if len(text) > MAX_ERROR_CHARS else "")


def _validation_part(part: Any) -> str:
    if not isinstance(part, dict):
        return str(part)
    where = ".".join(str(p) for p in part.get("loc", []) if p != "body")
    return f"{where}: {part.get('msg', part)}" if where else str(part.get("msg", part))
