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

import os as _os


def _pip_nvrtc_dir() -> "str | None":
    """The lib folder of pip's NVRTC (`pip install yangtuo[cuda]`), if it is installed."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted(glob.glob(_os.path.join(root, "*", "lib", "libnvrtc.so*"))):
            return _os.path.dirname(lib)
    return None


# the CUDA backend loads NVRTC from YANGTUO_NVRTC_DIR before looking for it by name
if "YANGTUO_NVRTC_DIR" not in _os.environ:
    _nvrtc = _pip_nvrtc_dir()
    if _nvrtc:
        _os.environ["YANGTUO_NVRTC_DIR"] = _nvrtc

from ._errors import (  # noqa: E402
    ContextLengthError,
    DeviceError,
    InvalidArgumentError,
    ModelLoadError,
    TemplateError,
    YangtuoError,
)
from ._pipeline import Tasks, TextGenerationPipeline, pipeline  # noqa: E402
from ._results import ChatResult, CompletionResult, Timings, Usage  # noqa: E402
from ._yangtuo import ChunkStream, Llama, Session, TextStream, __version__  # noqa: E402

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
