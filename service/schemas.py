"""Request bodies and queries (pydantic), and the one parser for each: every route and the
lean path validate through these. Limits that depend on settings are checked in the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .errors import ServiceError, bad_input, from_validation
from .manifest import MAX_SEED

MAX_LABEL_CHARS = 64
JSON = "application/json"
Body = TypeVar("Body", bound=BaseModel)

# Strict ints: JSON true/false must not pass as 1/0 for a seed, count or label.
Label = StrictInt | str
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateRequest(BaseModel):
    """``POST /v1/models/{name}/generate``: what to generate and how to return it."""

    model_config = _STRICT

    n: StrictInt | None = Field(
        default=None, ge=1, description="images; default 1, or the number of seeds/latents given"
    )
    seed: Seed | None = Field(
        default=None, ge=0, le=MAX_SEED, description="image i uses seed + i; random if omitted"
    )
    seeds: list[Seed] | None = Field(
        default=None, min_length=1, description="one explicit seed per image"
    )
    latents: list[list[float]] | None = Field(
        default=None, min_length=1, description="explicit latents, [n][nz] finite floats"
    )
    labels: Label | list[Label] | None = Field(
        default=None,
        description="class index or name: one for all images, one per image; omitted = balanced",
    )
    truncation: float | None = Field(
        default=None, ge=0.0, le=1.0, description="psi: latents are scaled by psi (1 = off)"
    )
    text: str | list[str] | None = Field(
        default=None,
        max_length=4096,
        description="text-to-image models: one caption for all images, or one per image",
    )
    format: Literal["png", "grid", "npy", "json"] = "png"
    columns: int | None = Field(default=None, ge=1, le=256, description="grid columns")
    timeout_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="answer 504 if still queued after this"
    )

    @property
    def count(self) -> int:
        if self.seeds is not None:
            return len(self.seeds)
        if self.latents is not None:
            return len(self.latents)
        if self.n is None and isinstance(self.text, list) and len(self.text) > 1:
            return len(self.text)  # one image per caption
        return self.n or 1


class InterpolateRequest(BaseModel):
    """``POST /v1/models/{name}/interpolate``: a walk between two seeds or two latents."""

    model_config = _STRICT

    seeds: list[Seed] | None = Field(default=None, min_length=2, max_length=2)
    latents: list[list[float]] | None = Field(default=None, min_length=2, max_length=2)
    steps: StrictInt = Field(default=8, ge=2, description="images including both ends")
    method: Literal["lerp", "slerp"] = "slerp"
    label: Label | None = Field(default=None, description="class for every frame")
    truncation: float | None = Field(default=None, ge=0.0, le=1.0)
    format: Literal["grid", "frames", "npy"] = "grid"
    columns: int | None = Field(default=None, ge=1, le=256)
    timeout_ms: int | None = Field(default=None, ge=1, le=600_000)


class PngQuery(BaseModel):
    """Query of ``GET .../generate``; unknown parameters are ignored, a repeated one is refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="image i uses seed + i; random if omitted"
    )
    label: str | None = Field(
        default=None, max_length=MAX_LABEL_CHARS, description="class index or class name"
    )
    n: int = Field(default=1, ge=1, description="images; more than one gives a grid")
    truncation: float | None = Field(default=None, ge=0.0, le=1.0, description="psi")
    columns: int | None = Field(default=None, ge=1, le=256, description="grid columns")


_QUERY_KEYS = frozenset(PngQuery.model_fields)


def parse_png_query(pairs: Iterable[tuple[str, str]]) -> PngQuery:
    """Decoded query pairs -> PngQuery, or ServiceError 422 naming the field."""
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in _QUERY_KEYS:
            if key in values:
                raise bad_input(key, f"{key}: given more than once")
            values[key] = value
    try:
        return PngQuery.model_validate(values)
    except ValidationError as exc:
        raise from_validation(exc.errors()) from None


def parse_json_body(
    schema: type[Body], content_type: str | None, body: bytes, required: bool
) -> Body:
    """A JSON request body -> ``schema``; 415 for another media type, 400 for bad JSON or a
    missing required body, 422 naming the field for an invalid one. An optional body left out
    means all defaults."""
    if not body:
        if required:
            raise ServiceError("missing_body", "a JSON body is required", "body")
        return schema()
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != JSON:
        shown = media[:64] or "none"
        raise ServiceError(
            "unsupported_media_type", f"body must be {JSON}, got {shown}", "content-type"
        )
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation(exc.errors()) from None


def json_schema_of(schema: type[BaseModel], required: bool = False) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its own body with parse_json_body."""
    return {
        "requestBody": {
            "content": {JSON: {"schema": schema.model_json_schema()}},
            "required": required,
        }
    }


def query_parameters(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI parameters of a route that parses its own query with the model."""
    parameters = []
    for key, prop in schema.model_json_schema()["properties"].items():
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:  # "X or null": a query parameter is X, or left out
            prop.update(branches[0])
        prop.pop("default", None) if prop.get("default") is None else None
        parameters.append({"name": key, "in": "query", "required": False, "schema": prop})
    return {"parameters": parameters}


class ReloadRequest(BaseModel):
    """``POST /v1/models/{name}/reload``: load the highest version, or the one named."""

    model_config = ConfigDict(extra="forbid")

    version: StrictInt | None = Field(default=None, ge=1)


def check_generate(req: GenerateRequest) -> None:
    """Cross-field rules, raised as 422 naming the field at fault."""
    given = [k for k in ("seed", "seeds", "latents") if getattr(req, k) is not None]
    if len(given) > 1:
        raise bad_input(given[1], f"give only one of seed, seeds, latents (got {', '.join(given)})")
    for key in ("seeds", "latents"):
        values = getattr(req, key)
        if values is not None and req.n is not None and req.n != len(values):
            raise bad_input("n", f"n={req.n} but {len(values)} {key} were given")


def check_interpolate(req: InterpolateRequest) -> None:
    if req.seeds is not None and req.latents is not None:
        raise bad_input("latents", "give seeds or latents, not both")
    if req.seeds is None and req.latents is None:
        raise bad_input("seeds", "give two seeds or two latents")
