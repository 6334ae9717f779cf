"""Image grids and semantic-layout pictures, written with Pillow."""

from .grid import colorize_layout, entity_usage, heatmap, layout_palette, make_grid, save_image, to_uint8

__all__ = ["colorize_layout", "entity_usage", "heatmap", "layout_palette", "make_grid", "save_image", "to_uint8"]
