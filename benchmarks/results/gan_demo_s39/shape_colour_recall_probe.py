"""python benchmarks/results/gan_demo_s39/shape_colour_recall_probe.py (session 39, issue 8): does recall in the
classifier's features care about the shape's own colour? Real images (procedural seed 1, centred pose) against the
reference (seed 0), n 2000, k 3, with only the shape's colour changed: its chroma scaled (the demo generators draw
shapes at 0.6-0.9 of the data's chroma, session 38), its luminance pushed towards white / black, and the thin-stroke
classes drawn in one polarity (their light shapes made dark: the one-polarity collapse of session 38's demo
generators). Output: shape_colour_recall.txt beside this file."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
from diag_recall import recall_by_group  # noqa: E402

from attnorm.data.procedural import ProceduralShapes, shape_alpha  # noqa: E402
from attnorm.metrics.extractors import get_extractor  # noqa: E402
from attnorm.metrics.maths import feature_statistics, frechet_distance, precision_recall  # noqa: E402

torch.set_num_threads(1)
n, C, K = 2000, 10, 3
ext = get_extractor("classifier")
ref = ext.features(ProceduralShapes(32, C, pose="centred", seed=0).get_batch(range(n))[0])
m_ref, s_ref = feature_statistics(ref)
ds = ProceduralShapes(32, C, pose="centred", seed=1)
x, y = ds.get_batch(range(n))
# the centred pose's shape mask per class (the renderer's geometry: scale 0.75 at the centre)
alpha = torch.stack([torch.from_numpy(shape_alpha(c, ds._u / 0.75, -ds._v / 0.75, pixel=2.0 / 32 / 0.75)).float()
                     for c in range(C)])
a = alpha[y][:, None]  # (n, 1, R, R)
img = (x + 1) / 2
inside = (a > 0.95).float()
fg = (img * inside).sum((2, 3)) / inside.sum((2, 3))  # (n, 3): the shape's colour (exact inside the mask)
lum = (fg @ torch.tensor([0.299, 0.587, 0.114]))[:, None]
lines = []


def with_fg(new_fg: torch.Tensor) -> torch.Tensor:
    return (img + a * (new_fg - fg)[:, :, None, None]).clamp(0, 1) * 2 - 1


def row(name: str, images: torch.Tensor) -> None:
    f = ext.features(images)
    pr = precision_recall(ref, f, k=K, per_sample=True)
    m, s = feature_statistics(f)
    # which reference images are recalled, per class (reference image i has class i % C)
    per_class = " ".join(f"{r:.2f}" for r in recall_by_group(pr["real_inside"], C, None)["recall_by_class"])
    lines.append(f"{name:48s} | precision {pr['precision']:.3f} | recall {pr['recall']:.3f} | "
                 f"FID {frechet_distance(m_ref, s_ref, m, s):.2f} | recall per class {per_class}")
    print(lines[-1], flush=True)


row("real (the floor)", x)
for s in (0.85, 0.7, 0.5, 0.0):
    row(f"shape chroma x{s}", with_fg(lum + (fg - lum) * s))
extreme = torch.where(lum > 0.5, lum + (1 - lum) * 0.5, lum * 0.5)
row("shape luminance halfway to white / black", with_fg(extreme + (fg - lum)))
light = lum[:, 0] > 0.5
u = (fg - 0.55) / 0.45  # the uniform draw behind a light shape's colour (render: fg = 0.55 + 0.45 u)
for cls in ((7,), (7, 9)):
    sel = light & torch.isin(y, torch.tensor(cls))
    row(f"classes {', '.join(map(str, cls))} dark only (light shapes -> 0.45 u)",
        with_fg(torch.where(sel[:, None], 0.45 * u, fg)))
out = Path(__file__).with_name("shape_colour_recall.txt")
out.write_text(f"# {' '.join(sys.argv)} (n {n}, k {K}, torch {torch.__version__})\n" + "\n".join(lines) + "\n")
