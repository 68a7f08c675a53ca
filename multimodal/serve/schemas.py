"""OpenAI's request bodies as pydantic models, with the project's own settings as extra fields.

JSON bodies are validated strictly (``"5"`` is not a number) and unknown fields are refused,
naming the closest known one (a setting a user wrote is never ignored); multipart form fields
(image edits, videos) arrive as strings and are validated in lax mode. Fields OpenAI defines
that this server cannot honour (``logprobs``, ``response_format: url``, ...) are declared with
the one value it can, so anything else is a 400 that names them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from multimodal.errors import did_you_mean
from multimodal.serve.errors import APIError

MAX_PROMPT_CHARS = 16_384  # a 1 MB prompt is a mistake (the models read 64..512 tokens)
MAX_N = 16  # choices or images of one request
MAX_PROMPTS = 16  # prompts of one completions request
MAX_MESSAGES = 64
MAX_STEPS = 1000
MAX_SEED = 2**64 - 1

Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextSampling(Request):
    """The sampling fields completions and chat completions share."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    stop: Union[Annotated[str, Field(max_length=256)],
                list[Annotated[str, Field(max_length=256)]], None] = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    user: str | None = None


class CompletionRequest(TextSampling):
    model: str | None = None
    prompt: Union[Prompt, list[Prompt]] = ""
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logprobs: None = None
    best_of: Literal[1] | None = None
    suffix: None = None


class ImageURL(Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Request):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ImagePart(Request):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[Prompt, list[Union[TextPart, ImagePart]], None] = Field(default=None)
    name: str | None = None


class ChatRequest(TextSampling):
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)

    @field_validator("messages")
    @classmethod
    def _bounded(cls, messages: list[Message]) -> list[Message]:
        """All the messages' text together within the limit of one prompt."""
        total = sum(len(m.content) if isinstance(m.content, str) else
                    sum(len(p.text) for p in m.content or [] if isinstance(p, TextPart))
                    for m in messages)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold {total} characters of text; at most "
                             f"{MAX_PROMPT_CHARS} in all")
        return messages
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logprobs: Literal[False] | None = None


class DiffusionSettings(Request):
    """The project's own settings of image and video requests (extra fields for OpenAI)."""

    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)
    num_inference_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    scheduler: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class ImageGenerationRequest(DiffusionSettings):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    size: str | None = None
    response_format: Literal["b64_json"] | None = None
    output_format: Literal["png"] | None = None
    stream: bool = False
    partial_images: int | None = Field(default=None, ge=0, le=3)
    user: str | None = None


class ImageEditRequest(ImageGenerationRequest):
    """The form fields of /v1/images/edits (the files travel beside them)."""

    strength: float | None = Field(default=None, ge=0.0, le=1.0)


class SpeechVoice(Request):
    id: str


class SpeechRequest(Request):
    input: str = Field(min_length=1, max_length=4096)
    model: str | None = None
    voice: Union[str, SpeechVoice]
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    vocoder: str | None = None


class VideoRequest(DiffusionSettings):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    seconds: Union[str, float, None] = None
    num_frames: int | None = Field(default=None, ge=1, le=1000)
    fps: float | None = Field(default=None, gt=0.0, le=100.0)
    size: str | None = None


def parse(model: type[Request], data: Any, *, form: bool = False) -> Any:
    """``data`` (a decoded JSON body, or form fields as strings when ``form``) validated as
    ``model``.

    Raises:
        APIError: 400 naming the first field at fault (an unknown field with a did-you-mean).
    """
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got "
                            f"{type(data).__name__}")
    try:
        return model.model_validate(data, strict=not form)
    except ValidationError as exc:
        raise validation_error(exc, model) from None


def validation_error(exc: ValidationError, model: type[Request] | None = None) -> APIError:
    """The first problem of a pydantic ``ValidationError`` as a 400."""
    problem = exc.errors()[0]
    # a union reports the member it tried ("str", "constrained-str", "TextPart"): keep the
    # field names and list indices only
    path = [str(p) for p in problem["loc"] if isinstance(p, int) or (
        str(p).isidentifier() and not str(p)[:1].isupper()
        and p not in ("str", "int", "float", "bool", "none"))]
    param = ".".join(path) or None
    if problem["type"] == "extra_forbidden" and model is not None:
        known = list(model.model_fields)
        name = path[-1] if path else "?"
        return APIError(400, f"unknown field '{param}'{did_you_mean(name, known)}",
                        param=param, code="unknown_parameter")
    value = problem.get("input")
    shown = repr(value)[:80] if not isinstance(value, (dict, list)) else type(value).__name__
    code = "string_above_max_length" if problem["type"] == "string_too_long" else \
        "invalid_value" if problem["type"] != "missing" else "missing_required_parameter"
    return APIError(400, f"{param or 'body'}: {problem['msg']} (got {shown})", param=param,
                    code=code)
