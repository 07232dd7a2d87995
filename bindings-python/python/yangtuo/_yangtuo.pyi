"""Type stubs for the extension module (src/*.rs)."""

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

from typing_extensions import Self, TypeAlias

from ._results import ChatResult, CompletionResult

__version__: str

Message: TypeAlias = Mapping[str, str]
Messages: TypeAlias = Sequence[Message]
# OpenAI's messages: besides {role, content}, an assistant's `tool_calls` (content None) and
# `tool` results with their `tool_call_id`
OpenAIMessages: TypeAlias = Sequence[Mapping[str, Any]]
Progress: TypeAlias = bool | Callable[[int, int, str], object] | None

class Llama:
    """A loaded Llama 2 model. Concurrent calls (from several threads) run in parallel, each
    with its own KV cache; device work is interleaved token by token, or with ``parallel=N``
    (N > 1) continuously batched: up to N generations share each decode step, one forward
    pass for all of them. The GIL is released while the model runs; Ctrl-C stops a
    generation within one token."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        backend: Literal["auto", "wgpu", "cuda", "cpu"] | str = "auto",
        quantize: Literal["q4_0", "q4_1", "q8_0", "q4_k", "q6_k", "f16"] | str | None = None,
        template: Literal["llama2", "llama2-chinese"] | str | None = None,
        n_ctx: int | None = None,
        progress: Progress = None,
        parallel: int = 1,
        tool_template: str | None = None,
        kv_cache_dtype: Literal["auto", "f16", "f32"] | str = "auto",
    ) -> None: ...
    @overload
    def chat(
        self,
        messages: Messages,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: Literal[False] = False,
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> ChatResult: ...
    @overload
    def chat(
        self,
        messages: Messages,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: Literal[True],
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> TextStream: ...
    @overload
    def chat(
        self,
        messages: Messages,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: bool,
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> ChatResult | TextStream: ...
    @overload
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: Literal[False] = False,
    ) -> CompletionResult: ...
    @overload
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: Literal[True],
    ) -> TextStream: ...
    @overload
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: bool,
    ) -> CompletionResult | TextStream: ...
    @overload
    def create_chat_completion(self, messages: OpenAIMessages, *, stream: Literal[True], **kwargs: Any) -> ChunkStream: ...
    @overload
    def create_chat_completion(
        self, messages: OpenAIMessages, *, stream: Literal[False] = False, **kwargs: Any
    ) -> dict[str, Any]: ...
    @overload
    def create_completion(self, prompt: str, *, stream: Literal[True], **kwargs: Any) -> ChunkStream: ...
    @overload
    def create_completion(self, prompt: str, *, stream: Literal[False] = False, **kwargs: Any) -> dict[str, Any]: ...
    def __call__(self, prompt: str, **kwargs: Any) -> dict[str, Any] | ChunkStream: ...
    def session(self, system: str | None = None) -> Session: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    def apply_chat_template(self, messages: Messages, allow_control_tokens: bool = False) -> list[int]: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def batch_stats(self) -> tuple[int, int] | None:
        """(steps, sequences): forward passes of the batch scheduler and the sequences in them."""
    @property
    def device(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def model_path(self) -> str: ...

class Session:
    """A conversation that keeps its KV cache between turns (``Llama.session``)."""

    @overload
    def chat(
        self,
        user: str,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: Literal[False] = False,
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> ChatResult: ...
    @overload
    def chat(
        self,
        user: str,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: Literal[True],
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> TextStream: ...
    @overload
    def chat(
        self,
        user: str,
        max_tokens: int | None = None,
        temperature: float | None = 0.6,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: bool,
        allow_control_tokens: bool = False,
        context_overflow: Literal["truncate-oldest", "error"] | None = None,
        response_format: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> ChatResult | TextStream: ...
    @property
    def messages(self) -> list[dict[str, str]]: ...
    def reset(self) -> None: ...
    def __len__(self) -> int: ...

class TextStream(Iterator[str]):
    """Text deltas of a streamed answer; ``result`` holds the full result once exhausted."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    @property
    def result(self) -> ChatResult | CompletionResult | None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> bool: ...

class ChunkStream(Iterator[dict[str, Any]]):
    """OpenAI chunk dicts (`chat.completion.chunk` / `text_completion`); closing it stops
    the generation at the next token."""
    def __iter__(self) -> Self: ...
    def __next__(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> bool: ...
