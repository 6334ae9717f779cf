"""Image grids, semantic-layout pictures and line plots, written with Pillow."""

from .grid import colorize_layout, entity_usage, heatmap, layout_palette, make_grid, save_image, save_line_plot

__all__ = ["colorize_layout", "entity_usage", "heatmap", "layout_palette", "make_grid", "save_image",
           "save_line_plot"]
