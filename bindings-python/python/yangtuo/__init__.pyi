from ._errors import ContextLengthError as ContextLengthError
from ._errors import DeviceError as DeviceError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import ModelLoadError as ModelLoadError
from ._errors import TemplateError as TemplateError
from ._errors import YangtuoError as YangtuoError
from ._pipeline import Tasks as Tasks
from ._pipeline import TextGenerationPipeline as TextGenerationPipeline
from ._pipeline import pipeline as pipeline
from ._results import ChatResult as ChatResult
from ._results import CompletionResult as CompletionResult
from ._results import Timings as Timings
from ._results import Usage as Usage
from ._yangtuo import Llama as Llama
from ._yangtuo import Session as Session
from ._yangtuo import ChunkStream as ChunkStream
from ._yangtuo import TextStream as TextStream
from ._yangtuo import __version__ as __version__

__all__ = [
    "ChatResult",
    "CompletionResult",
    "ContextLengthError",
    "DeviceError",
    "InvalidArgumentError",
    "Llama",
    "ModelLoadError",
    "Session",
    "TemplateError",
    "TextGenerationPipeline",
    "ChunkStream",
    "TextStream",
    "Timings",
    "Usage",
    "YangtuoError",
    "__version__",
    "pipeline",
    "Tasks",
]
