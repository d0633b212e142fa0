"""The request and response bodies of `genlab serve`, as strict pydantic models: unknown fields
are refused, nothing is coerced ("4" is not a number, 4.0 is not an integer, true is not 1), and
numbers must be finite. The OpenAPI schema at /openapi.json is generated from these.

The checks that depend on the model (a label within its classes, a text option for a text model)
are `genlab.generation.check_request`'s, the same as `genlab sample`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genlab.generation import MAX_SEED

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a run folder's name; never a path
MAX_IMAGES = 64  # per request
MAX_CLIPS = 16  # per audio request: Griffin-Lim takes ~0.4 s a clip on a CPU core
MAX_PROMPT = 16_384  # characters

ModelName = Annotated[str, Field(pattern=MODEL_NAME, max_length=128,
                                 description="A served model's name (its run folder's name); "
                                             "GET /v1/models lists them.")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="The same seed gives the same bytes.")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ImagesRequest(Strict):
    """Images from an image model: one base64 PNG per image, or one PNG grid."""

    model: ModelName
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES, description="Images to draw.")] = 1
    seed: Seed = 0
    label: int | Annotated[list[int], Field(max_length=MAX_IMAGES)] | None = Field(
        None, description="Conditional models: one class for every image, or a list of n "
                          "classes; default: classes 0..K-1 in turn.")
    response_format: Literal["b64_json", "png_grid"] = Field(
        "b64_json", description="b64_json: JSON with one base64 PNG per image; png_grid: the "
                                "PNG grid itself (image/png), as `genlab sample --out grid.png`.")
    # the sampling options of families that have them (diffusion); refused by the others
    sampler: Annotated[str, Field(max_length=32)] | None = Field(
        None, description="Sampler of a diffusion model (ddim, ddpm, ...).")
    steps: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        None, description="Sampling steps of a diffusion model.")
    guidance: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="Classifier-free guidance weight of a conditional diffusion model.")


class AudioRequest(ImagesRequest):
    """Clips from an audio model: one base64 WAV (8 kHz mono 16-bit) per clip, with its
    spectrogram as a base64 PNG."""

    n: Annotated[int, Field(ge=1, le=MAX_CLIPS, description="Clips to draw.")] = 1
    response_format: Literal["b64_wav"] = Field(
        "b64_wav", description="b64_wav: JSON with one base64 WAV per clip.")


class CompletionsRequest(Strict):
    """Text from a text model; `stream: true` sends server-sent events as tokens are made."""

    model: ModelName
    prompt: Annotated[str, Field(max_length=MAX_PROMPT)] | None = Field(
        None, description="The text continues this; default: a new line.")
    max_tokens: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Tokens to generate after the prompt (default 500).")
    temperature: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="Softmax temperature, 0 = greedy (default 1).")
    top_k: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None, description="Sample among the k likeliest tokens.")
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="Sample among the likeliest tokens holding probability p.")
    seed: Seed = 0
    stream: bool = Field(False, description="Send text/event-stream events `data: {...}` and a "
                                            "final `data: [DONE]`.")


# request field -> the option of `GenerationRequest.options` (a family's `sample_options`)
IMAGE_OPTIONS = {"sampler": "sampler", "steps": "sample_steps", "guidance": "guidance"}


# --- responses ---------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="The request field the error is about, if one.")
    code: None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageDatum(BaseModel):
    b64_json: str
    label: int | None


class ImagesResponse(BaseModel):
    created: int
    model: str
    model_sha256: str
    seed: int
    data: list[ImageDatum]


class AudioDatum(BaseModel):
    b64_wav: str = Field(description="A WAV file, base64: 16-bit PCM, mono, 8 kHz.")
    b64_png: str = Field(description="Its spectrogram, a base64 PNG.")
    label: int | None


class AudioResponse(BaseModel):
    created: int
    model: str
    model_sha256: str
    seed: int
    sample_rate: int
    data: list[AudioDatum]


class CompletionChoice(BaseModel):
    index: int
    text: str = Field(description="The generated text after the prompt.")
    finish_reason: Literal["length"] | None


class CompletionsResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    model_sha256: str
    seed: int
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str = Field(description="The model's name, as requests give it.")
    object: Literal["model"]
    created: int
    owned_by: str
    name: str
    family: str = Field(description="The genlab model family (dcgan, vae, gpt, ...).")
    modality: str
    endpoint: str = Field(description="The route that generates with it.")
    classes: int | None = Field(description="Classes of a conditional model, else null.")
    step: int | None = Field(description="The training step of the served checkpoint.")
    sha256: str = Field(description="SHA-256 of the served model.safetensors.")
    options: list[str] = Field(description="Family sampling options the model accepts.")
    eval: dict[str, Any] | None = Field(description="Figures of the run's `genlab eval` report "
                                                    "(eval.json), else null.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    models: list[str] = []
    message: str | None = None
