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


def config_from_args(args, resolve, overrides: dict, task: str, prefix: str) -> tuple[dict, Path]:
    """The run's config and folder from a ``train-*`` command's ``--config/--out/--resume``.

    ``resolve(config_file, overrides, base=None)`` layers the task's config; a resumed run
    starts from the ``config.json`` saved in its folder. Raises ValueError on misuse.
    """
    import time
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(args.out) / "config.json"
        if not saved.exists():
            raise ValueError(f"{saved} not found; is {args.out} a {task} run folder?")
        cfg = resolve(args.config, overrides, base=json.loads(saved.read_text()))
    else:
        cfg = resolve(args.config, overrides)
    return cfg, Path(args.out or f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


class TaskRun:
    """What both tasks' runners share: ``config.json`` in the run folder and ``run()``.

    Subclasses set ``cfg``, ``run_dir``, ``rank``, ``device`` and ``loop``.
    """

    cfg: dict
    run_dir: Path
    rank: int

    def write_config(self) -> None:
        """The resolved config, written by rank 0 only."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=2) + "\n")

    def run(self, resume: bool = False):
        """Train (after restoring the last checkpoint when ``resume``); returns the loop."""
        if resume:
            self.loop.resume(map_location=self.device)
        self.write_config()
        return self.loop.run()
