"""Weight files shipped with attnorm.

* ``procedural_classifier.safetensors``: the procedural-shapes classifier of
  :mod:`attnorm.metrics.classifier` (128-d features, 12 logits, ~280 K parameters),
  made by ``python -m attnorm.metrics.classifier --out attnorm/weights/procedural_classifier.safetensors
  --steps 2000 --seed 0``; its held-out accuracy and training settings are in the file's metadata.
"""
