"""Kubernetes quantities the renderer adds up (per-GPU requests, /dev/shm, checkpoints).

Why exact arithmetic: requests are rendered into goldens and hashed into the spec hash, so the
sum of "2" CPUs and 8 x "500m" must print the same every time. CPU is kept in millicores and
memory in bytes (both integers).
"""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def parse(text: str) -> Decimal:
    """A quantity as a number of base units (cores or bytes); the config schema checks it."""
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]


def cpu(cores: Decimal) -> str:
    """Whole cores as ``"4"``, otherwise millicores (``"2500m"``)."""
    milli = int((cores * 1000).to_integral_value(rounding="ROUND_CEILING"))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def binary(size: Decimal | int) -> str:
    """Bytes in the largest binary unit that divides them (``"48Gi"``, ``"768Mi"``)."""
    count = int(Decimal(size).to_integral_value(rounding="ROUND_CEILING"))
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if count and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)
