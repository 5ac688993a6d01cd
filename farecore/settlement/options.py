"""What a day's merge is told besides the rides: travel limits and revocation knowledge."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MergeOptions", "RevocationGeneration"]


@dataclass(frozen=True, slots=True)
class RevocationGeneration:
    """A revocation table the settlement was given: which cards its generation held."""

    generation: int
    created_at: int  # UTC Unix seconds
    holds: Callable[[np.ndarray], np.ndarray]  # uint64 card ids -> bool mask


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """Limits for the travel check; ``revoked_at`` maps card id to UTC Unix seconds;
    ``generations`` are the signed tables given, for the generation rule."""

    max_speed_kmh: int = 120
    min_travel_m: int = 2000
    revoked_at: Mapping[int, int] = field(default_factory=dict)
    generations: tuple[RevocationGeneration, ...] = ()
    revocation_max_age_s: int = 172_800
