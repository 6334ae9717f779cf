"""Inpainting commands that need the training stack (``attnorm train-inpaint``)."""
