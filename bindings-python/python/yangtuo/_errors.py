"""The exceptions yangtuo raises. Every one is a `YangtuoError`; `code` is the engine's
stable error code (``MODEL_LOAD``, ``TEMPLATE``, ``CONTEXT_LENGTH``, ``INVALID_ARG``,
``DEVICE``)."""

from __future__ import annotations


class YangtuoError(Exception):
    """Base class of yangtuo's errors. ``http_status`` and ``openai_error`` are how
    ``yangtuo serve`` answers it (400 or 500, and OpenAI's ``{"error": {...}}`` body), for
    servers written in Python."""

    code: str = "ERROR"
    http_status: int = 500
    openai_error: dict | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ModelLoadError(YangtuoError):
    """A model file or folder that cannot be read or is not a supported model (a missing
    file, bad config.json or GGUF, an unusable tokenizer)."""

    code = "MODEL_LOAD"


class TemplateError(YangtuoError):
    """Messages the chat template cannot render (wrong roles or order, control strings in
    content). ``index`` is the offending message's position in ``messages``."""

    code = "TEMPLATE"

    def __init__(self, message: str, *, index: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.index = index


class ContextLengthError(YangtuoError):
    """The prompt plus ``max_tokens`` does not fit the context window (``n_ctx``)."""

    code = "CONTEXT_LENGTH"

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        requested: int | None = None,
        context: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.prompt_tokens = prompt_tokens
        self.requested = requested
        self.context = context


class DeviceError(YangtuoError):
    """No usable compute device, or the device failed or ran out of memory."""

    code = "DEVICE"


class InvalidArgumentError(YangtuoError, ValueError):
    """A parameter outside its valid range; ``name`` is the parameter."""

    code = "INVALID_ARG"

    def __init__(self, message: str, *, name: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.name = name
