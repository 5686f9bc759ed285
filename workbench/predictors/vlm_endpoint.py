"""The VLM moderator on an OpenAI-compatible chat-completions server (vLLM, Ollama, ...).

`vllm serve Qwen/Qwen2.5-VL-3B-Instruct` on a GPU box, then point the workbench at
`http://host:8000/v1`. Each meme is one request: the image as a base64 JPEG data URL plus
the moderation prompt. Requests run `concurrency` at a time; 5xx / 429 / connection errors
and timeouts are retried with exponential backoff; what still fails becomes that meme's
stored error. Where the server takes them, the request asks for
- a constrained answer in "label" mode (vLLM `structured_outputs: {choice: [...]}`, older
  vLLM `guided_choice`); a server that rejects them is asked again without, and remembered;
- token logprobs: the top alternatives at the class word give `prob_toxic`.
The API key comes from the environment (WORKBENCH_VLM_API_KEY or OPENAI_API_KEY) and is
never stored with the run.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from workbench.errors import ModelUnavailable
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput
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

ENDPOINT_OPTIONS: tuple[Option, ...] = (
    Option("timeout_s", 120.0, "seconds per request before it counts as timed out", "float"),
    Option("retries", 3, "retries of a request after 5xx / 429 / connection errors / timeouts", "int"),
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
            "logprobs": self.want_logprobs, "image_max_side": self.image_max_side,
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

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        if self._client is None:
            self.load()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch)) or 1) as pool:
            return list(pool.map(self._predict_one, batch))

    def prompt_for(self, item: PredictInput) -> str:
        ocr = item.ocr_text if self.use_ocr_text else ""
        return render_prompt(self.prompt, ocr, self.toxic_word, self.non_toxic_word)

    def request_body(self, item: PredictInput, choice_style: str | None, logprobs: bool) -> dict[str, Any]:
        """The chat-completions JSON for one meme."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(item.image, self.image_max_side)}},
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
        """POST with what the server accepts; a 400 while asking for extras drops them and retries."""
        while True:
            style = self._choice_styles[0]
            logprobs = self._logprobs_ok
            try:
                return self._post_with_retries(self.request_body(item, style, logprobs))
            except _Rejected as exc:
                with self._learn_lock:
                    if style is not None and self._choice_styles and self._choice_styles[0] == style:
                        self._choice_styles.pop(0)
                    elif style is None and logprobs and self._logprobs_ok:
                        self._logprobs_ok = False
                    elif style is None and not logprobs:
                        raise EndpointError(str(exc)) from None

    def _post_with_retries(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The answer JSON and the attempts it took; 5xx / 429 / connection errors / timeouts
        are retried `retries` times, waiting `backoff_s`, then twice as long each time."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        url = f"{self.endpoint}/chat/completions"
        retrying = Retrying(stop=stop_after_attempt(self.retries + 1), wait=wait_exponential(multiplier=self.backoff_s),
                            retry=retry_if_exception_type(_Retryable), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    data = self._post_once(url, body)
        except _Retryable as exc:
            raise EndpointError(f"{exc} ({self.retries + 1} attempts to {url})") from None
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
        detail = _error_detail(response)
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {detail}")
        if response.status_code in (400, 422):
            raise _Rejected(f"HTTP {response.status_code}: {detail}")
        raise EndpointError(f"HTTP {response.status_code} from {url}: {detail}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _Rejected(Exception):
    """The server rejected the request body (HTTP 400/422): maybe an extra it does not know."""


class _Retryable(Exception):
    """A failure worth another attempt (5xx / 429 / connection error / timeout); the message
    says what happened."""


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


def _error_detail(response: Any) -> str:
    try:
        data = response.json()
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except ValueError:
        return response.text[:300]
