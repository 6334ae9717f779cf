"""attnorm: Attentive Normalization for conditional image generation and inpainting."""

__version__ = "0.1.0"
