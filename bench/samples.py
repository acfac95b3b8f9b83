"""What every benchmark counts per measured thing: the good samples, and the ones that timed out or failed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Samples:
    """Seconds of each good sample; timeouts and errors are counted apart and left out of the percentiles."""

    seconds: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0

    def percentile(self, fraction: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
