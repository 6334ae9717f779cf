"""``python -m attnorm.cli <command>`` (and ``torchrun -m attnorm.cli <command>``): as ``attnorm <command>``."""

from attnorm.cli import main

raise SystemExit(main())
