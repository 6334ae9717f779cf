"""class_grid.py GEN.safetensors OUT.png CLASSES: per class (comma-separated indices) one row of 8 real images
(centred procedural, seed 5) then 8 samples of GEN (latents of torch seed 0), at 1x."""
import sys, torch
from PIL import Image
from attnorm.checkpoints import load_gan_generator
from attnorm.data.procedural import ProceduralShapes
G = load_gan_generator(sys.argv[1])[0]; out = sys.argv[2]; classes = [int(c) for c in sys.argv[3].split(",")]
ds = ProceduralShapes(32, 10, seed=5, pose="centred")
rows = []
torch.manual_seed(0)
for c in classes:
    idx = [c + 10 * i for i in range(8)]
    xr, _ = ds.get_batch(idx)
    with torch.no_grad():
        xf = G(torch.randn(8, G.z_dim), torch.full((8,), c))
    rows.append(torch.cat([xr, xf]))
x = torch.stack(rows)  # (C, 16, 3, 32, 32)
x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 3, 1, 4, 2)  # C,H,16,W,3
C = len(classes)
img = x.reshape(C * 32, 16 * 32, 3).numpy()
Image.fromarray(img).save(out)
