"""Request bodies (pydantic). Limits that depend on settings are checked in the routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .errors import bad_input
from .manifest import MAX_SEED

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


class ReloadRequest(BaseModel):
    """``POST /v1/models/{name}/reload``: load the highest version, or the one named."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1)


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
