"""Results of `Llama.chat` and `Llama.generate`: dicts in OpenAI's shape (as
llama-cpp-python returns them) that also read as attributes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, cast


class Usage(dict[str, int]):
    """Token counts: ``usage.total_tokens`` or ``usage["total_tokens"]``."""

    @property
    def prompt_tokens(self) -> int:
        return self["prompt_tokens"]

    @property
    def completion_tokens(self) -> int:
        return self["completion_tokens"]

    @property
    def total_tokens(self) -> int:
        return self["total_tokens"]


@dataclass(frozen=True)
class Timings:
    """Where the time went. ``prefill_tokens`` counts the prompt tokens actually run (a KV
    prefix reused from an earlier call is not run again)."""

    prefill_tokens: int
    prefill_s: float
    ttft_s: float
    decode_tokens: int
    decode_s: float
    prefill_tok_s: float
    decode_tok_s: float


def _envelope(kind: str, prefix: str, model: str, choice: dict[str, Any], core: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": prefix + uuid.uuid4().hex,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": Usage(core["usage"]),
    }


class ChatResult(dict[str, Any]):
    """A chat answer. As a dict it is an OpenAI ``chat.completion``:
    ``r["choices"][0]["message"]["content"]``, ``r["usage"]["total_tokens"]``; as an object:
    ``r.content``, ``r.finish_reason`` (``"stop"`` or ``"length"``), ``r.usage``, ``r.ids``
    (the answer's token ids), ``r.timings`` and ``r.dropped_turns`` (the oldest turns left
    out so the chat fits the context)."""

    ids: list[int]
    timings: Timings
    dropped_turns: int

    @classmethod
    def _from_core(cls, core: dict[str, Any], model: str) -> ChatResult:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": core["text"]},
            "finish_reason": core["finish_reason"],
        }
        r = cls(_envelope("chat.completion", "chatcmpl-", model, choice, core))
        r.ids = core["ids"]
        r.timings = Timings(**core["timings"])
        r.dropped_turns = core["dropped_turns"]
        return r

    @property
    def content(self) -> str:
        return cast(str, self["choices"][0]["message"]["content"])

    @property
    def text(self) -> str:
        """The same as ``content``."""
        return self.content

    @property
    def finish_reason(self) -> str:
        return cast(str, self["choices"][0]["finish_reason"])

    @property
    def usage(self) -> Usage:
        return cast(Usage, self["usage"])


class CompletionResult(dict[str, Any]):
    """A raw completion. As a dict it is an OpenAI ``text_completion``:
    ``r["choices"][0]["text"]``; as an object: ``r.text``, ``r.finish_reason``, ``r.usage``,
    ``r.ids`` and ``r.timings``."""

    ids: list[int]
    timings: Timings

    @classmethod
    def _from_core(cls, core: dict[str, Any], model: str) -> CompletionResult:
        choice = {"text": core["text"], "index": 0, "logprobs": None, "finish_reason": core["finish_reason"]}
        r = cls(_envelope("text_completion", "cmpl-", model, choice, core))
        r.ids = core["ids"]
        r.timings = Timings(**core["timings"])
        return r

    @property
    def text(self) -> str:
        return cast(str, self["choices"][0]["text"])

    @property
    def finish_reason(self) -> str:
        return cast(str, self["choices"][0]["finish_reason"])

    @property
    def usage(self) -> Usage:
        return cast(Usage, self["usage"])
