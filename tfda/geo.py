"""The Earth's radius and great-circle distance, in one place for every package.

The haversine form (Sinnott 1984, Sky & Telescope 68:159) stays accurate for the
short distances the tracker and the localisation need, where the spherical law of
cosines loses digits. A sphere of radius 6371 km (the IUGG mean radius) is what
ERA5 and the tracker assume.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0
EARTH_RADIUS_M = EARTH_RADIUS_KM * 1e3
KM_PER_DEG = math.pi * EARTH_RADIUS_KM / 180.0
"""Length of one degree of latitude (km)."""


def central_angle(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Central angle (radians) between points in degrees, broadcasting.

    Torch tensors in give a tensor out (on their device); anything else goes
    through numpy."""
    if any(isinstance(v, torch.Tensor) for v in (lat1, lon1, lat2, lon2)):
        p1, p2 = torch.deg2rad(torch.as_tensor(lat1)), torch.deg2rad(torch.as_tensor(lat2))
        dl = torch.deg2rad(torch.as_tensor(lon2) - torch.as_tensor(lon1))
        h = torch.sin((p2 - p1) / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
        return 2.0 * torch.asin(h.clamp(0.0, 1.0).sqrt())
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def great_circle_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle (haversine) distance in km between points in degrees, broadcasting;
    a tensor for tensor inputs, an ndarray otherwise."""
    return EARTH_RADIUS_KM * central_angle(lat1, lon1, lat2, lon2)
