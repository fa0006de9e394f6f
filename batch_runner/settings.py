"""Run settings: command-line flags override the manifest, which overrides the defaults."""

from __future__ import annotations

from dataclasses import dataclass

from . import api_spec
from .manifest import RunSettings

DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class Settings:
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    max_cost: float | None = None
    price_per_image: float = api_spec.PRICE_PER_IMAGE


def resolve(manifest: RunSettings, flags: RunSettings) -> Settings:
    def pick(name: str, default):
        for source in (flags, manifest):
            value = getattr(source, name)
            if value is not None:
                return value
        return default

    return Settings(
        concurrency=int(pick("concurrency", DEFAULT_CONCURRENCY)),
        rpm=pick("rpm", None),
        max_cost=pick("max_cost", None),
        price_per_image=float(pick("price_per_image", api_spec.PRICE_PER_IMAGE)),
    )
