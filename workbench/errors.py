"""Errors the UI and CLI show to people as they are."""

from __future__ import annotations


class ModelUnavailable(RuntimeError):
    """A model's weights cannot be loaded. The message names the model, the reason and
    how to supply the weights; the rest of the app keeps working."""

    def __init__(self, model_id: str, reason: str, how_to_fix: str | None = None) -> None:
        self.model_id, self.reason = model_id, reason
        self.how_to_fix = how_to_fix or default_fix(model_id)
        super().__init__(f"Model '{model_id}' cannot be loaded: {reason}. {self.how_to_fix}")


class PermissionDenied(PermissionError):
    """Sign-in is on and the acting user's role does not allow this action; the message says
    who, what was refused and which role it needs."""


def default_fix(model_id: str) -> str:
    """How to supply Hugging Face weights for `model_id` on a machine without hub access."""
    return (
        f"To supply it: on a machine with internet run `huggingface-cli download {model_id}` "
        "(or `hf download`), then copy the cache (~/.cache/huggingface, or set HF_HOME / "
        "WORKBENCH_HF_CACHE) here; or download the folder anywhere and enter its local path "
        "as the model id."
    )
