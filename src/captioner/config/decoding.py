"""How captions are decoded: the one type that travels from `params.yaml` (the `evaluate`
section) to the run info, the model folder's `decoding.json`, the CLI, the service and the export.

Every field is documented here with its default; the defaults are the pipeline's (greedy, no
length penalty, no n-gram blocking, 40 words at most, the most likely candidate kept). Values are checked strictly: a width of
``2.0`` or ``true`` is refused, not rounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["DecodingConfig", "DecodingError"]


class DecodingError(ValueError):
    """Decoding settings that are not valid; the message names their source and the setting."""


class DecodingConfig(BaseModel):
    """The decoding settings of a model: beam search over the model's (or ensemble's) next-word
    probabilities."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    beam_width: int = Field(1, ge=1, description="beams kept at each step; 1 = greedy")
    length_penalty: float = Field(
        0.0, ge=0.0, description="GNMT length penalty alpha: the final beam is chosen by "
        "log-probability / ((5 + length) / 6) ** alpha; 0 = raw log-probability")
    block_repeat_ngram: int = Field(0, ge=0, description="forbid repeating any n-gram of this size; 0 = off")
    max_length: int = Field(40, ge=1, description="words generated at most")
    rerank: Literal["beam", "consensus"] = Field(
        "beam", description="how the caption is chosen among the beam's final candidates: beam = the "
        "highest (length-penalised) log-probability; consensus = the highest expected CIDEr-D against the "
        "other candidates (minimum Bayes risk; needs beam_width > 1 and the model folder's n-gram "
        "document frequencies; the SavedModel export refuses it)")
    consensus_weights: Literal["uniform", "probability"] = Field(
        "uniform", description="consensus: each other candidate counts equally (uniform) or by its "
        "probability under the model (probability)")

    @model_validator(mode="after")
    def _consensus_needs_candidates(self) -> DecodingConfig:
        if self.rerank == "consensus" and self.beam_width < 2:
            raise ValueError("rerank 'consensus' chooses among the beam's candidates: it needs beam_width >= 2")
        return self

    @classmethod
    def of(cls, settings: Any) -> DecodingConfig:
        """The decoding part of any object with these fields (e.g. the `evaluate` params)."""
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> DecodingConfig:
        """Build from a JSON object (a model folder's decoding.json); DecodingError naming
        `source` and the setting on unknown keys or bad values."""
        if not isinstance(data, Mapping):
            raise DecodingError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise DecodingError(f"{source}: {_describe(e)}") from None

    def overridden(self, **changes: Any) -> DecodingConfig:
        """A copy with the settings in `changes` that are not None (command-line flags, form
        fields), validated like the rest."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as e:
            raise DecodingError(f"decoding settings: {_describe(e)}") from None

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON object (the layout of decoding.json)."""
        return self.model_dump()


def _describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(settings)"
        msg = "unknown decoding setting" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    known = ", ".join(DecodingConfig.model_fields)
    return "; ".join(parts) + (f" (known: {known})" if any(e["type"] == "extra_forbidden" for e in error.errors()) else "")
