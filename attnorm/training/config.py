"""Layered run configuration: defaults <- JSON file <- ``key=value`` overrides."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path


def layered_config(defaults: dict, config_file: str | os.PathLike | None = None,
                   overrides: dict | None = None, base: dict | None = None,
                   ignore_underscore: bool = False) -> dict:
    """``base`` (default ``defaults``) <- JSON file <- ``overrides``; keys not in ``defaults`` raise.

    ``ignore_underscore`` drops keys starting with ``_`` (``"_comment"``) from the file and
    the overrides instead of rejecting them.
    """
    cfg = copy.deepcopy(base if base is not None else defaults)
    layers = []
    if config_file is not None:
        layers.append((str(config_file), json.loads(Path(config_file).read_text())))
    if overrides:
        layers.append(("overrides", overrides))
    for where, layer in layers:
        if ignore_underscore:
            layer = {k: v for k, v in layer.items() if not k.startswith("_")}
        unknown = sorted(set(layer) - set(defaults))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {where}; known keys: {sorted(defaults)}")
        cfg.update(layer)
    return cfg
