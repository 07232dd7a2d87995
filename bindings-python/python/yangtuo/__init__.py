"""yangtuo (羊驼): Llama 2 chat models on GPU (wgpu: Vulkan, Metal, DX12; CUDA) and CPU.

    >>> import yangtuo
    >>> llm = yangtuo.Llama("path/to/Llama-2-7b-chat-hf")
    >>> r = llm.chat([{"role": "user", "content": "咖啡的作用是什么?"}], max_tokens=64)
    >>> r.content, r["usage"]["total_tokens"]
    >>> for delta in llm.chat(messages, stream=True): print(delta, end="")

Concurrent calls on one ``Llama`` (from several threads) run in parallel, each with its own
KV cache; device work is interleaved token by token. The GIL is released while the model
runs, and Ctrl-C stops a generation within one token, leaving the model usable.
"""

from ._errors import (
    ContextLengthError,
    DeviceError,
    InvalidArgumentError,
    ModelLoadError,
    TemplateError,
    YangtuoError,
)
from ._pipeline import Tasks, TextGenerationPipeline, pipeline
from ._results import ChatResult, CompletionResult, Timings, Usage
from ._yangtuo import ChunkStream, Llama, Session, TextStream, __version__

# shown as yangtuo.X in tracebacks and reprs
for _cls in (
    YangtuoError,
    ModelLoadError,
    TemplateError,
    ContextLengthError,
    DeviceError,
    InvalidArgumentError,
    ChatResult,
    CompletionResult,
    Usage,
    Timings,
    TextGenerationPipeline,
    Tasks,
):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "ChatResult",
    "CompletionResult",
    "ContextLengthError",
    "DeviceError",
    "InvalidArgumentError",
    "Llama",
    "ModelLoadError",
    "Session",
    "Tasks",
    "TemplateError",
    "TextGenerationPipeline",
    "ChunkStream",
    "TextStream",
    "Timings",
    "Usage",
    "YangtuoError",
    "__version__",
    "pipeline",
]
