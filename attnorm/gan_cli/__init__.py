"""Command-line commands of the class-conditional GAN: train-gan, sample, interpolate, layouts, demo."""
