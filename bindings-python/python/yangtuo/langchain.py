"""LangChain models over yangtuo (``pip install 'yangtuo[langchain]'``).

- ``Llama2``: a LangChain ``LLM``, the counterpart of the Llama2-Chinese community's
  ``llama2_for_langchain.py``: the prompt goes to the model as one user message, through the
  model's chat template.
- ``ChatYangtuo``: a ``BaseChatModel``: System/Human/AI/Tool messages become the
  system/user/assistant/tool roles of an OpenAI-shaped request. ``with_structured_output(
  PydanticModel | json_schema)`` returns parsed objects, and ``bind_tools(...)`` answers with
  ``tool_calls``, both by constrained decoding (every token masked so the answer satisfies
  the schema).

Both take a loaded ``yangtuo.Llama`` (``llm=``) or a path (``model=``, plus the keyword
arguments of ``yangtuo.Llama``), stream token by token, and work in LCEL chains::

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | ChatYangtuo(model=path) | StrOutputParser()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, cast

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import LanguageModelInput
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.language_models.llms import LLM
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolCall,
        ToolMessage,
    )
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
    from langchain_core.runnables import Runnable, RunnableLambda
    from langchain_core.tools import BaseTool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
except ImportError as e:  # pragma: no cover
    raise ImportError("yangtuo.langchain needs langchain-core: pip install 'yangtuo[langchain]'") from e

from ._yangtuo import Llama

_LOAD_KEYS = ("backend", "quantize", "template", "n_ctx", "progress", "kv_cache_dtype")
_CHAT_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")


class _YangtuoParams(BaseModel):
    """What both models share: the loaded model and the default chat arguments."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    llm: Any = Field(default=None, exclude=True)
    """A loaded ``yangtuo.Llama``; loaded from ``model`` when not given."""
    model: Optional[str] = Field(default=None, validation_alias=AliasChoices("model", "model_name_or_path"))
    """A model folder or ``.gguf`` file (``model_name_or_path`` as in llama2_for_langchain.py)."""
    backend: str = "auto"
    quantize: Optional[str] = None
    template: Optional[str] = None
    n_ctx: Optional[int] = None
    kv_cache_dtype: str = "auto"
    progress: Any = None

    max_tokens: Optional[int] = None
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: Optional[list[str]] = None
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

    def _chat_kwargs(self, stop: Optional[list[str]], kwargs: dict[str, Any]) -> dict[str, Any]:
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
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> str:
        return cast(str, self.llm.chat(_user(prompt), **self._chat_kwargs(stop, kwargs)).content)

    def _stream(
        self,
        prompt: str,
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        with self.llm.chat(_user(prompt), stream=True, **self._chat_kwargs(stop, kwargs)) as deltas:
            for delta in deltas:
                chunk = GenerationChunk(text=delta)
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk


class ChatYangtuo(_YangtuoParams, BaseChatModel):
    """A LangChain chat model over the model's chat template, through the OpenAI-shaped
    ``create_chat_completion`` (so tools, ``response_format`` and the rest are core's)."""

    @property
    def _llm_type(self) -> str:
        return "yangtuo-chat"

    def _request(self, messages: list[BaseMessage], stop: Optional[list[str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in self._chat_kwargs(stop, kwargs).items() if v is not None}
        return {"messages": to_yangtuo_messages(messages), **kw}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> ChatResult:
        r = self.llm.create_chat_completion(**self._request(messages, stop, kwargs))
        choice = r["choices"][0]
        m = choice["message"]
        calls = [_tool_call(c) for c in m.get("tool_calls") or []]
        msg = AIMessage(
            content=m["content"] or "", tool_calls=calls, usage_metadata=_usage(r["usage"]), response_metadata=self._metadata(choice)
        )
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={"finish_reason": choice["finish_reason"]})])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: Optional[list[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        req = self._request(messages, stop, kwargs)
        for c in self.llm.create_chat_completion(**req, stream=True, stream_options={"include_usage": True}):
            if not c["choices"]:
                yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=_usage(c["usage"])))
                continue
            choice = c["choices"][0]
            delta = choice["delta"]
            text = delta.get("content") or ""
            calls = [
                {"name": t["function"]["name"], "args": t["function"]["arguments"], "id": t["id"], "index": t["index"]}
                for t in delta.get("tool_calls") or []
            ]
            if choice["finish_reason"] is not None:
                last = AIMessageChunk(content=text, response_metadata=self._metadata(choice))
                yield ChatGenerationChunk(message=last, generation_info={"finish_reason": choice["finish_reason"]})
            elif text or calls:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, tool_call_chunks=calls))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk

    def _metadata(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {"finish_reason": choice["finish_reason"], "model_name": self.model or self.llm.model_path}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | Optional[bool] = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, BaseMessage]:
        """The model with ``tools`` (functions, pydantic models, LangChain tools or OpenAI
        tool dicts) offered on every call. ``tool_choice``: ``"auto"`` (the default),
        ``"none"``, ``"any"``/``"required"``/``True`` (some tool must be called), or a tool's
        name. A call is constrained so that its arguments satisfy the tool's schema."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = _tool_choice(tool_choice)
        return self.bind(tools=formatted, **kwargs)

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


def to_yangtuo_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages → OpenAI message dicts: system, human → user, ai → assistant (with
    its ``tool_calls``), a ``ToolMessage`` → a ``tool`` result; a ``ChatMessage`` keeps its
    role."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": _text(m.content)})
            continue
        if isinstance(m, ChatMessage):
            role = m.role
        elif isinstance(m, (SystemMessage, HumanMessage, AIMessage)):
            role = _ROLES[m.type]
        else:
            raise TypeError(
                f"messages[{i}]: {type(m).__name__} has no role in a Llama 2 chat (use system, human, ai or tool messages)"
            )
        d: dict[str, Any] = {"role": role, "content": _text(m.content)}
        if isinstance(m, AIMessage) and m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)},
                }
                for c in m.tool_calls
            ]
            d["content"] = d["content"] or None
        out.append(d)
    return out


def _tool_call(c: dict[str, Any]) -> ToolCall:
    return ToolCall(name=c["function"]["name"], args=json.loads(c["function"]["arguments"]), id=c["id"])


def _tool_choice(choice: dict[str, Any] | str | bool) -> dict[str, Any] | str:
    if choice is True or choice == "any":
        return "required"
    if choice is False:
        return "none"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice  # type: ignore[return-value]


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    parts = [
        c if isinstance(c, str) else c.get("text", "") for c in content if isinstance(c, str) or c.get("type") == "text"
    ]
    return "".join(parts)


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _usage(u: dict[str, Any]) -> UsageMetadata:
    """An OpenAI usage dict as LangChain counts it."""
    return {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"], "total_tokens": u["total_tokens"]}


__all__ = ["ChatYangtuo", "Llama2", "to_yangtuo_messages"]
