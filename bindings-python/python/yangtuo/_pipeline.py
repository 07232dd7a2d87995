"""`yangtuo.pipeline`: the transformers-style entry point."""

from __future__ import annotations

import os
from typing import Any, cast

from ._yangtuo import Llama

Messages = list[dict[str, str]]


class TextGenerationPipeline:
    """``pipe(text)`` or ``pipe(messages)`` → ``{"text": answer}``, through ``Llama.chat``.
    A list of texts or of conversations gives a list of results. Keyword arguments go to
    ``chat``; transformers' ``max_new_tokens`` and ``do_sample=False`` are understood."""

    task = "text-generation"

    def __init__(self, llm: Llama, **chat_kwargs: Any) -> None:
        self.llm = llm
        self.chat_kwargs = chat_kwargs

    def __call__(self, inputs: str | Messages | list[str] | list[Messages], **kwargs: Any) -> Any:
        kw = _chat_kwargs({**self.chat_kwargs, **kwargs})
        if isinstance(inputs, str):
            return self._one([{"role": "user", "content": inputs}], kw)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, (str, list, tuple)) for x in inputs):
            return [self(cast(Any, x), **kwargs) for x in inputs]
        return self._one(inputs, kw)

    def _one(self, messages: Any, kw: dict[str, Any]) -> dict[str, str]:
        return {"text": self.llm.chat(messages, **kw).content}

    def __repr__(self) -> str:
        return f"TextGenerationPipeline(llm={self.llm!r})"


def _chat_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    if "max_new_tokens" in kw:
        kw["max_tokens"] = kw.pop("max_new_tokens")
    if "do_sample" in kw and not kw.pop("do_sample"):
        kw["temperature"] = 0.0
    return kw


def pipeline(
    task: str = "text-generation",
    model: str | os.PathLike[str] | Llama | None = None,
    **kwargs: Any,
) -> TextGenerationPipeline:
    """``pipeline("text-generation", model="path/to/model")``: a callable chat pipeline.
    ``model`` is a model folder, a ``.gguf`` file or a loaded ``Llama``; the keyword arguments
    of ``Llama(...)`` (backend, quantize, template, n_ctx, progress) load it, and any others
    become the pipeline's default ``chat`` arguments."""
    if task not in ("text-generation", "conversational", "chat"):
        raise ValueError(f"unsupported task {task!r}: yangtuo only does 'text-generation'")
    if model is None:
        raise ValueError("pipeline needs model=: a model folder, a .gguf file or a yangtuo.Llama")
    load_keys = {"backend", "quantize", "template", "n_ctx", "progress"}
    load = {k: v for k, v in kwargs.items() if k in load_keys}
    chat = {k: v for k, v in kwargs.items() if k not in load_keys}
    llm = model if isinstance(model, Llama) else Llama(model, **load)
    if isinstance(model, Llama) and load:
        raise ValueError(f"{sorted(load)} only apply when loading: pass them to Llama(...) instead")
    return TextGenerationPipeline(llm, **chat)
