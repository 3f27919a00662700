"""A site's private part: what personalises the shared model at this site, kept at the site.

The private part is a logit offset (``personalisation = "offset"``) trained inside the
same clipped, noised DP-SGD steps as the shared weights (``fedcare.site.training``),
and, after the optional final fine-tuning, the site's fine-tuned copy of the shared
weights. It lives in ``private-part.json`` in the site's state dir (written atomically),
is loaded at the start of every round, so it survives restarts of the site, and is never
put in a reply to the server. Its ``version`` grows by one at every save; ``global-round``
is the server round it was last trained at.

The personalised model is the shared model (the global one, or the site's fine-tuned
copy) with the offset added to the bias of its last layer: the logit is
``w.h + b + offset``, exactly what training optimised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.common.errors import ModelMismatch
from fedcare.common.files import strict_json_loads, write_json_atomic

logger = logging.getLogger(__name__)

PRIVATE_PART_FILENAME = "private-part.json"
PRIVATE_PART_FORMAT = "fedcare-private-part"
PRIVATE_PART_VERSION = 2
PHASES = ("round", "finetune")
_KEYS_V1 = ("format", "format-version", "kind", "version", "run", "global-round", "phase",
            "offset", "weights")
_KEYS = (*_KEYS_V1, "iterate", "averaged")


@dataclass(frozen=True, kw_only=True)
class PrivatePart:
    offset: float
    version: int  # 0: never trained
    run: str
    global_round: int
    phase: str = "round"
    weights: tuple[np.ndarray, ...] | None = None  # the fine-tuned shared weights, if any
    kind: str = "offset"
    # The last trained offset, where the next training step starts; ``offset`` (what the
    # personalised model uses) is the mean of the last ``averaged`` iterates, or this one
    # when ``averaged`` is 0. Averaging released (noised) iterates is post-processing.
    iterate: float | None = None
    averaged: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.iterate is None:
            object.__setattr__(self, "iterate", self.offset)
        if not (math.isfinite(self.offset) and math.isfinite(self.last_iterate)):
            problems.append(f"offset and iterate must be finite numbers; got {self.offset!r}, "
                            f"{self.iterate!r}")
        if self.averaged < 0:
            problems.append(f"averaged must be >= 0; got {self.averaged!r}")
        if self.version < 0 or self.global_round < 0:
            problems.append(f"version and global-round must be >= 0; got {self.version!r}, "
                            f"{self.global_round!r}")
        if self.phase not in PHASES:
            problems.append(f"phase must be one of {', '.join(PHASES)}; got {self.phase!r}")
        if self.kind != "offset":
            problems.append(f"kind must be 'offset'; got {self.kind!r}")
        if self.weights is not None and not all(np.isfinite(w).all() for w in self.weights):
            problems.append("weights must be finite numbers; got NaN or infinity")
        if problems:
            raise ValueError("private part: " + "; ".join(problems))

    @property
    def last_iterate(self) -> float:
        """Where the next round's training starts."""
        return self.offset if self.iterate is None else self.iterate

    def trained(self, *, offset: float, run: str, global_round: int, phase: str = "round",
                weights: Sequence[np.ndarray] | None = None, average: bool = False
                ) -> PrivatePart:
        """The next version of this part; ``offset`` is the new iterate. With ``average``
        the personalised offset is the running mean of the iterates averaged so far and
        this one (tail averaging); else it is the new iterate."""
        count = self.averaged + 1 if average else 0
        used = (self.offset + (offset - self.offset) / count) if count > 1 else offset
        return PrivatePart(offset=used, iterate=offset, averaged=count, version=self.version + 1,
                           run=run, global_round=global_round, phase=phase,
                           weights=None if weights is None else tuple(
                               np.asarray(w, np.float32) for w in weights))

    def for_run(self, run: str) -> PrivatePart:
        """This part as the start of ``run``: an offset from another run (another global
        model) is not carried over; the version keeps counting."""
        if run == self.run:
            return self
        return PrivatePart(offset=0.0, version=self.version, run=run, global_round=0)

    def apply(self, shared: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The personalised weights: the fine-tuned copy (if any, else ``shared``) with the
        offset added to the last layer's bias."""
        base = list(self.weights) if self.weights is not None else list(shared)
        if [w.shape for w in base] != [np.shape(w) for w in shared]:
            raise ModelMismatch(f"private part: fine-tuned weights must have the shapes of the "
                                f"shared model {[np.shape(w) for w in shared]}; "
                                f"got {[w.shape for w in base]}")
        out = [np.array(w, dtype=np.float32, copy=True) for w in base]
        out[-1] = out[-1] + np.float32(self.offset)
        return out

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind, "private-part-version": self.version, "run": self.run,
                "global-round": self.global_round, "phase": self.phase,
                "fine-tuned": self.weights is not None, "averaged-iterates": self.averaged}

    def to_dict(self) -> dict[str, Any]:
        return {"format": PRIVATE_PART_FORMAT, "format-version": PRIVATE_PART_VERSION,
                "kind": self.kind, "version": self.version, "run": self.run,
                "global-round": self.global_round, "phase": self.phase,
                "offset": self.offset, "iterate": self.iterate, "averaged": self.averaged,
                "weights": None if self.weights is None else [
                    {"shape": list(w.shape), "values": w.ravel().tolist()}
                    for w in self.weights]}

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> PrivatePart:
        if not isinstance(data, dict) or data.get("format") != PRIVATE_PART_FORMAT or \
                data.get("format-version") not in (1, PRIVATE_PART_VERSION):
            raise ModelMismatch(f"{path}: private part must be a {PRIVATE_PART_FORMAT} object "
                                f"of format-version 1 or {PRIVATE_PART_VERSION}; got "
                                f"{str(data)[:120]!r}")
        keys = _KEYS if data["format-version"] == PRIVATE_PART_VERSION else _KEYS_V1
        if sorted(data) != sorted(keys):
            raise ModelMismatch(f"{path}: private part keys must be {', '.join(keys)}; "
                                f"got {', '.join(sorted(data))}")
        try:
            weights = None if data["weights"] is None else tuple(
                np.asarray(w["values"], np.float32).reshape(w["shape"])
                for w in data["weights"])
            return cls(offset=float(data["offset"]), version=int(data["version"]),
                       run=str(data["run"]), global_round=int(data["global-round"]),
                       phase=str(data["phase"]), weights=weights, kind=str(data["kind"]),
                       iterate=float(data["iterate"] if "iterate" in data else data["offset"]),
                       averaged=int(data.get("averaged", 0)))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelMismatch(f"{path}: private part is malformed: {err}") from err


def load_private_part(state_dir: Path) -> PrivatePart | None:
    """The site's private part, or ``None`` when it has none yet."""
    path = Path(state_dir) / PRIVATE_PART_FILENAME
    if not path.is_file():
        return None
    return PrivatePart.from_dict(strict_json_loads(path.read_text(encoding="utf-8")), path)


def save_private_part(state_dir: Path, part: PrivatePart) -> Path:
    path = Path(state_dir) / PRIVATE_PART_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, part.to_dict())
    logger.info("private part v%d saved at the site (run %s, round %d, %s, offset %.4f)",
                part.version, part.run, part.global_round, part.phase, part.offset)
    return path
