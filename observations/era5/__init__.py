"""ERA5 for tfda: CDS requests and resumable downloads, reading, writing.

ERA5 (Hersbach et al. 2020, QJRMS 146:1999) is the truth of the Lee study
(Rafid et al., SC'24 workshops, Sec. V) and the training data of FourCastNet v1
(Pathak et al. 2022), whose 20 input channels are :data:`FOURCASTNET_CHANNELS`.

* :mod:`~tfda.observations.era5.channels`: where each channel lives in ERA5;
* :mod:`~tfda.observations.era5.client`: :func:`build_requests`, :func:`download`;
* :mod:`~tfda.observations.era5.reader`: :func:`load_era5`, :func:`load_prepared`,
  :func:`check_fourcastnet_grid`;
* :mod:`~tfda.observations.era5.writer`: :func:`write_netcdf`.
"""

from tfda.observations.era5.channels import FOURCASTNET_CHANNELS, ChannelSpec, channel_spec
from tfda.observations.era5.client import (
    CDS_URL,
    PRESSURE_LEVELS,
    SINGLE_LEVELS,
    Era5AccessError,
    Era5Request,
    RetrieveClient,
    build_requests,
    download,
    is_complete,
)
from tfda.observations.era5.reader import check_fourcastnet_grid, load_era5, load_prepared
from tfda.observations.era5.writer import write_netcdf

__all__ = [
    "CDS_URL", "FOURCASTNET_CHANNELS", "PRESSURE_LEVELS", "SINGLE_LEVELS", "ChannelSpec",
    "Era5AccessError", "Era5Request", "RetrieveClient", "build_requests", "channel_spec",
    "check_fourcastnet_grid", "download", "is_complete", "load_era5", "load_prepared",
    "write_netcdf",
]
