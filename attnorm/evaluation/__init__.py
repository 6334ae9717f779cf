"""Evaluation protocols: :mod:`.gan` (FID/KID/IS/intra-FID/PR/accuracy of a class-conditional
generator) and :mod:`.inpaint` (PSNR/SSIM/L1 per mask-area bin of an inpainting method)."""
