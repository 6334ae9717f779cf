"""spec_probe.py GEN.safetensors ...: each generator's radial power spectrum over the data's (2000 centred procedural images,
seed 0; 2000 samples with the same labels), radius 1-16 at 32 px (radius k: k periods across the image)."""
import sys, torch
from attnorm.checkpoints import load_gan_generator
from attnorm.data.procedural import ProceduralShapes
def radial(x):
    x = x.double(); x = x - x.mean((2, 3), keepdim=True)
    p = torch.fft.fft2(x).abs().pow(2).mean((0, 1))  # (H, W)
    H = x.shape[-1]; k = torch.fft.fftfreq(H) * H
    r = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round().long()
    out = torch.zeros(int(r.max()) + 1, dtype=torch.double).index_add_(0, r.flatten(), p.flatten())
    cnt = torch.zeros_like(out).index_add_(0, r.flatten(), torch.ones_like(p.flatten()))
    return (out / cnt)[1:H // 2 + 1]
ds = ProceduralShapes(32, 10, seed=0, pose="centred")
x, y = ds.get_batch(range(2000))
ref = radial(x)
print("radius:", " ".join(f"{i:5d}" for i in range(1, 17)))
print("data log10P:", " ".join(f"{v:5.2f}" for v in ref.log10().tolist()))
torch.manual_seed(0)
for p in sys.argv[1:]:
    G = load_gan_generator(p)[0]
    with torch.no_grad():
        g = torch.cat([G(torch.randn(500, G.z_dim), y[i:i + 500]) for i in range(0, 2000, 500)])
    print(p[-40:], " ".join(f"{v:5.2f}" for v in (radial(g) / ref).tolist()))
