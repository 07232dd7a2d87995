"""LangChain models over yangtuo (``pip install 'yangtuo[langchain]'``).

- ``Llama2``: a LangChain ``LLM``, the counterpart of the Llama2-Chinese community's
  ``llama2_for_langchain.py``: the prompt goes to the model as one user message, through the
  model's chat template.
- ``ChatYangtuo``: a ``BaseChatModel``: System/Human/AI messages become the
  system/user/assistant roles of the chat template. ``with_structured_output(PydanticModel |
  json_schema)`` returns parsed objects, by constrained decoding (every token masked so the
  answer satisfies the schema).

Both take a loaded ``yangtuo.Llama`` (``llm=``) or a path (``model=``, plus the keyword
arguments of ``yangtuo.Llama``), stream token by token, and work in LCEL chains::

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | ChatYangtuo(model=path) | StrOutputParser()
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, cast

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.language_models.llms import LLM
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
    )
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
    from langchain_core.runnables import Runnable, RunnableLambda
    from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
except ImportError as e:  # pragma: no cover
    raise ImportError("yangtuo.langchain needs langchain-core: pip install 'yangtuo[langchain]'") from e

from ._yangtuo import Llama

_LOAD_KEYS = ("backend", "quantize", "template", "n_ctx", "progress")
_CHAT_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")


class _YangtuoParams(BaseModel):
    """What both models share: the loaded model and the default chat arguments."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    llm: Any = Field(default=None, exclude=True)
    """A loaded ``yangtuo.Llama``; loaded from ``model`` when not given."""
    model: str | None = Field(default=None, validation_alias=AliasChoices("model", "model_name_or_path"))
    """A model folder or ``.gguf`` file (``model_name_or_path`` as in llama2_for_langchain.py)."""
    backend: str = "auto"
    quantize: str | None = None
    template: str | None = None
    n_ctx: int | None = None
    progress: Any = None

    max_tokens: int | None = None
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    """Stop sequences for every call; a call's own ``stop`` adds to them."""

    @model_validator(mode="after")
    def _load(self) -> Any:
        if self.llm is None:
            if self.model is None:
                raise ValueError("give llm=yangtuo.Llama(...) or model=<model folder or .gguf file>")
            self.llm = Llama(self.model, **{k: getattr(self, k) for k in _LOAD_KEYS})
        elif not isinstance(self.llm, Llama):
            raise TypeError(f"llm must be a yangtuo.Llama, got {type(self.llm).__name__}")
        return self

    def _chat_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {k: getattr(self, k) for k in _CHAT_KEYS}
        kw.update(kwargs)
        stops = [*(self.stop or []), *(stop or []), *(kwargs.get("stop") or [])]
        kw["stop"] = stops or None
        return kw

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model or self.llm.model_path, **{k: getattr(self, k) for k in _CHAT_KEYS}}


class Llama2(_YangtuoParams, LLM):
    """A LangChain ``LLM``: ``invoke(prompt)`` sends the prompt as one user message."""

    @property
    def _llm_type(self) -> str:
        return "yangtuo-llama2"

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return cast(str, self.llm.chat(_user(prompt), **self._chat_kwargs(stop, kwargs)).content)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        with self.llm.chat(_user(prompt), stream=True, **self._chat_kwargs(stop, kwargs)) as deltas:
            for delta in deltas:
                chunk = GenerationChunk(text=delta)
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk


class ChatYangtuo(_YangtuoParams, BaseChatModel):
    """A LangChain chat model over the model's chat template."""

    @property
    def _llm_type(self) -> str:
        return "yangtuo-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        r = self.llm.chat(to_yangtuo_messages(messages), **self._chat_kwargs(stop, kwargs))
        msg = AIMessage(content=r.content, usage_metadata=_usage(r), response_metadata=self._metadata(r))
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={"finish_reason": r.finish_reason})])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        with self.llm.chat(to_yangtuo_messages(messages), stream=True, **self._chat_kwargs(stop, kwargs)) as deltas:
            for delta in deltas:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            r = deltas.result
            if r is not None:
                last = AIMessageChunk(content="", usage_metadata=_usage(r), response_metadata=self._metadata(r))
                yield ChatGenerationChunk(message=last, generation_info={"finish_reason": r.finish_reason})

    def _metadata(self, r: Any) -> dict[str, Any]:
        return {"finish_reason": r.finish_reason, "model_name": self.model or self.llm.model_path}

    def with_structured_output(  # type: ignore[override]
        self, schema: dict[str, Any] | type[BaseModel], *, method: str = "json_schema", include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        """A runnable whose answer is an instance of ``schema`` (a pydantic model class) or a
        dict satisfying it (a JSON Schema), by constrained decoding through the model's
        ``response_format``; ``method="json_mode"`` asks for any JSON object. With
        ``include_raw=True`` the result is ``{"raw", "parsed", "parsing_error"}``."""
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        is_model = isinstance(schema, type) and issubclass(schema, BaseModel)
        if method == "json_mode":
            fmt: dict[str, Any] = {"type": "json_object"}
        elif method == "json_schema":
            js = schema.model_json_schema() if is_model else schema  # type: ignore[union-attr]
            fmt = {"type": "json_schema", "json_schema": {"name": js.get("title", "output"), "schema": js, "strict": True}}
        else:
            raise ValueError(f"method must be json_schema or json_mode, got {method!r}")

        def parse(message: BaseMessage) -> Any:
            text = _text(message.content)
            return schema.model_validate_json(text) if is_model else json.loads(text)  # type: ignore[union-attr]

        def parse_with_raw(message: BaseMessage) -> dict[str, Any]:
            try:
                return {"raw": message, "parsed": parse(message), "parsing_error": None}
            except Exception as e:  # noqa: BLE001 - reported, as LangChain's include_raw does
                return {"raw": message, "parsed": None, "parsing_error": e}

        return self.bind(response_format=fmt) | RunnableLambda(parse_with_raw if include_raw else parse)


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_yangtuo_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages → ``[{"role", "content"}]``: system, human → user, ai → assistant
    (a ``ChatMessage`` keeps its role). Other kinds (tools, functions) have no role in a
    Llama 2 template."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, ChatMessage):
            role = m.role
        elif isinstance(m, (SystemMessage, HumanMessage, AIMessage)):
            role = _ROLES[m.type]
        else:
            raise TypeError(
                f"messages[{i}]: {type(m).__name__} has no role in a Llama 2 chat (use system, human or ai messages)"
            )
        out.append({"role": role, "content": _text(m.content)})
    return out


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    parts = [
        c if isinstance(c, str) else c.get("text", "") for c in content if isinstance(c, str) or c.get("type") == "text"
    ]
    return "".join(parts)


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _usage(r: Any) -> UsageMetadata:
    return {
        "input_tokens": r.usage.prompt_tokens,
        "output_tokens": r.usage.completion_tokens,
        "total_tokens": r.usage.total_tokens,
    }


__all__ = ["ChatYangtuo", "Llama2", "to_yangtuo_messages"]
