"""Observations: error models, operators (gridded and point), ERA5 and best-track inputs."""

from tfda.observations.points import PointObservations

__all__ = ["PointObservations"]
