"""The city grid for the dataset builder; it lives in the shipped model code (`nextlocllm_hf.modeling.grid_nextlocllm`),
so inference puts a point in the cell the builder put it in."""

from ..modeling.grid_nextlocllm import Grid

__all__ = ["Grid"]
