"""ERA5 channels: where each FourCastNet v1 input channel lives in the CDS catalogue.

FourCastNet v1 (Pathak et al. 2022) takes the 20 channels of
:data:`FOURCASTNET_CHANNELS` (docs/design.md section 3, earth2studio spelling); a
channel name is a surface field (``"tcwv"``) or a variable prefix and a pressure
level in hPa (``"z500"``).
"""

from __future__ import annotations

from dataclasses import dataclass

FOURCASTNET_CHANNELS: tuple[str, ...] = (
    "u10m", "v10m", "t2m", "sp", "msl", "t850", "u1000", "v1000", "z1000", "u850",
    "v850", "z850", "u500", "v500", "z500", "t500", "z50", "r500", "r850", "tcwv",
)  # fmt: skip

# earth2studio name -> (CDS request name, netCDF short name, units, long name)
_SURFACE: dict[str, tuple[str, str, str, str]] = {
    "u10m": ("10m_u_component_of_wind", "u10", "m s-1", "10 metre U wind component"),
    "v10m": ("10m_v_component_of_wind", "v10", "m s-1", "10 metre V wind component"),
    "t2m": ("2m_temperature", "t2m", "K", "2 metre temperature"),
    "sp": ("surface_pressure", "sp", "Pa", "Surface pressure"),
    "msl": ("mean_sea_level_pressure", "msl", "Pa", "Mean sea level pressure"),
    "tcwv": ("total_column_water_vapour", "tcwv", "kg m-2", "Total column vertically-integrated water vapour"),  # noqa: E501
}
# prefix -> (CDS request name, short name, units, long name)
_UPPER: dict[str, tuple[str, str, str, str]] = {
    "u": ("u_component_of_wind", "u", "m s-1", "U component of wind"),
    "v": ("v_component_of_wind", "v", "m s-1", "V component of wind"),
    "z": ("geopotential", "z", "m2 s-2", "Geopotential"),
    "t": ("temperature", "t", "K", "Temperature"),
    "r": ("relative_humidity", "r", "%", "Relative humidity"),
}


@dataclass(frozen=True)
class ChannelSpec:
    """Where one channel lives in ERA5: ``level`` is None on single levels (hPa otherwise)."""

    name: str
    request_name: str
    short_name: str
    level: int | None
    units: str
    long_name: str


def channel_spec(name: str) -> ChannelSpec:
    """The ERA5 source of a channel such as ``"z500"`` or ``"tcwv"``."""
    if name in _SURFACE:
        req, short, units, long = _SURFACE[name]
        return ChannelSpec(name, req, short, None, units, long)
    prefix, digits = name[:1], name[1:]
    if prefix in _UPPER and digits.isdigit():
        req, short, units, long = _UPPER[prefix]
        return ChannelSpec(name, req, short, int(digits), units, f"{long} at {digits} hPa")
    raise ValueError(f"channel {name!r} is not an ERA5 channel tfda knows")


