"""Weight files shipped with attnorm.

* ``procedural_classifier.safetensors``: the procedural-shapes classifier of
  :mod:`attnorm.metrics.classifier` (128-d features, 12 logits, ~280 K parameters),
  made by ``python -m attnorm.metrics.classifier --out attnorm/weights/procedural_classifier.safetensors
  --steps 2000 --seed 0``; its held-out accuracy and training settings are in the file's metadata.
* ``inpaint_photos.safetensors``: the default generator of ``attnorm inpaint`` (an
  :class:`attnorm.models.inpaint.InpaintGenerator`, width 0.5, AN, ``hole_fill="harmonic"``,
  EMA weights), trained on CPU on 128 px crops of the scikit-image *train* photos plus three
  colour photos from scikit-learn / matplotlib (``configs/inpaint_photos.json``):
  ``OMP_NUM_THREADS=1 attnorm train-inpaint --config configs/inpaint_photos.json --out runs/inpaint_photos``
  then ``attnorm export-inpaint runs/inpaint_photos/checkpoints/latest.pt
  attnorm/weights/inpaint_photos.safetensors``; the file's metadata records the step and the
  full training config. ``python benchmarks/bench_inpaint_quality.py`` scores it.
* ``gan_centred16.safetensors``: the default generator of ``attnorm sample``, ``interpolate``,
  ``layouts``, ``demo``'s pretrained figures and ``serve`` (32 px, G ch 16, AN, 10 procedural
  classes drawn centred and upright), trained on CPU with ``configs/gan_centred16.json`` (the
  two phases its comment gives) and exported by ``attnorm export-gan ... --standing-stats 200``
  (session 15).
* ``gan_centred32.safetensors``: the default until session 15 (G ch 32, ``configs/gan_centred32.json``,
  session 11); pass it as ``--ckpt``.
* ``gan_procedural32.safetensors``: the same generator architecture trained on the random-pose
  shapes (``configs/gan_procedural32.json``, then fine-tuned with ``d_mbstd_by_class``; README,
  "Shipped weights"); pass it as ``--ckpt``.
"""
