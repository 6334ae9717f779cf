"""python benchmarks/results/gan_demo_s38/shape_colour_probe.py GEN.safetensors ... (session 38, issue 8): the colour
of the shape itself (mean over the class's interior pixels;
centred pose: one mask per class) in real images and each generator's, n 2000 (classes i % 10).

Per set: the shapes' mean chroma (largest minus smallest channel), mean luminance of the light and of the dark
shapes, the light fraction, the per-channel std of each group, and improved precision / recall (k = 3) of the shape
colours (3-d points) against the reference's; the light fraction per class and the classes drawn in one polarity
(light fraction below 0.1 or above 0.9; the data's is about 0.5 in every class). Output: shape_colour.txt beside this file (session 38's run; the last column pair: the light fraction of each class 0-9
and how many classes are drawn in one polarity)."""
import sys
import torch
from attnorm.data.procedural import ProceduralShapes, shape_alpha
from attnorm.checkpoints import load_gan_generator
from attnorm.metrics.maths import precision_recall
torch.set_num_threads(1)
n, C = 2000, 10
ds = ProceduralShapes(32, C, length=n, seed=1, pose="centred")
masks = []
for c in range(C):
    a = shape_alpha(c, ds._u / 0.75, -ds._v / 0.75, pixel=2.0 / 32 / 0.75)
    masks.append(torch.from_numpy(a > 0.95))
def colours(x, y):  # x (b, 3, R, R) in [-1, 1]
    x = (x + 1) / 2
    return torch.stack([x[i][:, masks[int(y[i])]].mean(1) for i in range(len(y))])
def stats(col, labels, name, ref=None):
    chroma = (col.max(1).values - col.min(1).values)
    lum = col @ torch.tensor([0.299, 0.587, 0.114])
    light = lum > 0.5
    per_class = [light[labels == c].float().mean().item() for c in range(C)]
    row = {"name": name, "chroma_mean": chroma.mean().item(), "lum_light_mean": lum[light].mean().item(),
           "lum_dark_mean": lum[~light].mean().item(), "light_frac": light.float().mean().item(),
           "std_rgb_light": col[light].std(0).mean().item(), "std_rgb_dark": col[~light].std(0).mean().item(),
           "light_frac_per_class": " ".join(f"{v:.2f}" for v in per_class),
           "classes_one_polarity": sum(v < 0.1 or v > 0.9 for v in per_class)}
    if ref is not None:
        pr = precision_recall(ref.numpy(), col.numpy(), k=3)
        row["precision"], row["recall"] = pr["precision"], pr["recall"]
    return row


real0, y0 = ProceduralShapes(32, C, length=n, seed=0, pose="centred").get_batch(range(n))
real1, y1 = ds.get_batch(range(n))
ref = colours(real0, y0)
rows = [stats(ref, y0, "real seed 0 (reference)"), stats(colours(real1, y1), y1, "real seed 1", ref)]
ys = torch.arange(n) % C
for path in sys.argv[1:]:
    G, _ = load_gan_generator(path)
    g = torch.Generator().manual_seed(0)
    outs = []
    with torch.no_grad():
        for i in range(0, n, 200):
            z = torch.randn(200, G.z_dim, generator=g)
            outs.append(G(z, ys[i:i + 200]).float())
    rows.append(stats(colours(torch.cat(outs), ys), ys, path.replace("/root/runs/", ""), ref))
for r in rows:
    print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else str(v) for k, v in r.items()))
