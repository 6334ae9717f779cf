"""Training: the generic phase loop (:mod:`.loop`), the run skeleton and config layering (:mod:`.config`),
multi-process helpers (:mod:`.distributed`) and the two tasks' setups (:mod:`.gan`, :mod:`.inpaint`)."""
