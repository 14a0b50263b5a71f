"""Web Mercator for the dataset builder: the definitions live in the shipped model code
(`nextlocllm_hf.modeling.geometry_nextlocllm`), so a built city and a model's inference project alike."""

from ..modeling.geometry_nextlocllm import (
    MAX_MERCATOR_LAT,
    WEB_MERCATOR_RADIUS_M,
    ground_to_projected,
    lonlat_to_mercator,
    mercator_to_lonlat,
    valid_lonlat_mask,
)

__all__ = [
    "MAX_MERCATOR_LAT",
    "WEB_MERCATOR_RADIUS_M",
    "ground_to_projected",
    "lonlat_to_mercator",
    "mercator_to_lonlat",
    "valid_lonlat_mask",
]
