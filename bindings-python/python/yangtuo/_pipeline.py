"""`yangtuo.pipeline`: the transformers-style entry point."""

from __future__ import annotations

import os
from typing import Any, cast

from ._yangtuo import Llama

Messages = list[dict[str, str]]


class Tasks:
    """The task names of modelscope's ``Tasks`` that this pipeline serves, so code written
    as ``pipeline(Tasks.text_generation, model=...)`` runs unchanged."""

    text_generation = "text-generation"
    chat = "chat"


TASKS = ("text-generation", "conversational", "chat")


class TextGenerationPipeline:
    """``pipe(text)`` or ``pipe(messages)`` → ``{"text": answer}`` (modelscope's shape),
    through ``Llama.chat``. A list of texts or of conversations gives a list of results.
    Keyword arguments go to ``chat``; transformers' ``max_new_tokens`` and
    ``do_sample=False`` are understood.

    ``output_format="transformers"`` answers as transformers' pipeline does instead:
    ``[{"generated_text": ...}]``, holding the prompt and the answer (``return_full_text``,
    transformers' default) or the answer alone (``return_full_text=False``); for messages,
    the full text is the conversation with the assistant's turn appended."""

    task = "text-generation"

    def __init__(self, llm: Llama, output_format: str = "modelscope", **chat_kwargs: Any) -> None:
        if output_format not in ("modelscope", "transformers"):
            raise ValueError(f"output_format must be 'modelscope' or 'transformers', not {output_format!r}")
        self.llm = llm
        self.output_format = output_format
        self.chat_kwargs = chat_kwargs

    def __call__(self, inputs: str | Messages | list[str] | list[Messages], **kwargs: Any) -> Any:
        kw = _chat_kwargs({**self.chat_kwargs, **kwargs})
        if self.output_format == "modelscope" and "return_full_text" in kw:
            raise ValueError("return_full_text applies with output_format='transformers'")
        full_text = kw.pop("return_full_text", True)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, (str, list, tuple)) for x in inputs):
            return [self(cast(Any, x), **kwargs) for x in inputs]
        if isinstance(inputs, str):
            messages: Any = [{"role": "user", "content": inputs}]
        else:
            messages = inputs
        answer = self.llm.chat(messages, **kw).content
        if self.output_format == "modelscope":
            return {"text": answer}
        if not full_text:
            return [{"generated_text": answer}]
        if isinstance(inputs, str):
            return [{"generated_text": inputs + answer}]
        return [{"generated_text": [*map(dict, messages), {"role": "assistant", "content": answer}]}]

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
    of ``Llama(...)`` (backend, quantize, template, n_ctx, progress, parallel, kv_cache_dtype)
    load it,
    ``output_format`` picks the answer's shape (see ``TextGenerationPipeline``), and any
    others become the pipeline's default ``chat`` arguments. ``task`` takes modelscope's
    ``Tasks.text_generation`` / ``Tasks.chat`` (also as ``yangtuo.Tasks``)."""
    if task not in TASKS:
        raise ValueError(f"unsupported task {task!r}: yangtuo does {', '.join(TASKS)}")
    if model is None:
        raise ValueError("pipeline needs model=: a model folder, a .gguf file or a yangtuo.Llama")
    output_format = kwargs.pop("output_format", "modelscope")
    load_keys = {"backend", "quantize", "template", "n_ctx", "progress", "parallel", "kv_cache_dtype"}
    load = {k: v for k, v in kwargs.items() if k in load_keys}
    chat = {k: v for k, v in kwargs.items() if k not in load_keys}
    llm = model if isinstance(model, Llama) else Llama(model, **load)
    if isinstance(model, Llama) and load:
        raise ValueError(f"{sorted(load)} only apply when loading: pass them to Llama(...) instead")
    return TextGenerationPipeline(llm, output_format, **chat)
