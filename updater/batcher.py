"""Micro-batches: samples are cut by size or age (encoding is :func:`rankcore.features.encode`)."""

from __future__ import annotations

from rankcore.sample import Sample

# 512, though smaller batches learn faster (`bench quality`'s stream, seed 7, AUC after drift:
# 0.752 at 128, 0.732 at 256, 0.696 at 512): at 128 or 256 the live model's held-out AUC
# swings more between versions and the gate rejected 16 of 39 candidates in a 90 s demo
# (6 at 512), stretching freshness p95 from 8 s to 21 s.
DEFAULT_BATCH_SIZE = 512
DEFAULT_MAX_WAIT_S = 0.5


class Batcher:
    """Collects samples; a batch is due when it is full or its oldest sample is too old."""

    def __init__(self, size: int = DEFAULT_BATCH_SIZE, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        if size <= 0:
            raise ValueError(f"expected a positive batch size, got {size!r}")
        self.size = size
        self.max_wait_s = max_wait_s
        self._samples: list[Sample] = []
        self._first_at = 0.0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, samples: list[Sample], now: float) -> list[list[Sample]]:
        """Add samples; return the full batches they complete."""
        if samples and not self._samples:
            self._first_at = now
        self._samples.extend(samples)
        out = []
        while len(self._samples) >= self.size:
            out.append(self._samples[: self.size])
            del self._samples[: self.size]
            self._first_at = now
        return out

    def due(self, now: float) -> bool:
        return bool(self._samples) and now - self._first_at >= self.max_wait_s

    def flush(self) -> list[Sample]:
        out, self._samples = self._samples, []
        return out
