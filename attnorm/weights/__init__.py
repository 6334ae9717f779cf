"""Weight files shipped with attnorm.

* ``procedural_classifier.safetensors``: the procedural-shapes classifier of
  :mod:`attnorm.metrics.classifier` (128-d features, 12 logits, ~280 K parameters),
  made by ``python -m attnorm.metrics.classifier --out attnorm/weights/procedural_classifier.safetensors
  --steps 2000 --seed 0``; its held-out accuracy and training settings are in the file's metadata.
* ``inpaint_skimage.safetensors``: the default generator of ``attnorm inpaint`` (an
  :class:`attnorm.models.inpaint.InpaintGenerator`, width 0.5, AN, EMA weights), trained
  on CPU on 128 px random crops of the scikit-image *train* photos with mixed box/free-form
  holes: ``OMP_NUM_THREADS=1 attnorm train-inpaint --config configs/inpaint_shipped.json
  --out runs/inpaint_shipped`` then ``attnorm export-inpaint
  runs/inpaint_shipped/checkpoints/latest.pt attnorm/weights/inpaint_skimage.safetensors``
  (the run stops at ``max_seconds``, so the step count depends on the machine: the file's
  metadata records the step, training seconds and the full training config). A small
  CPU budget: it is a working default, not a paper-quality model.
"""
