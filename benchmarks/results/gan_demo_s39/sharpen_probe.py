"""python benchmarks/results/gan_demo_s39/sharpen_probe.py [GEN.safetensors] (session 39, issue 8): is the shipped
weights' FID gap (0.22 against a floor of 0.05) their missing mid-band power (0.8-0.85 of the data's at 5-10 px
periods, session 37)? A fixed unsharp mask on G's images, x + amount * (x - blur_0.7px(x)), at three amounts, each
scored against the reference (n 2000, k 3, latent seeds 0-2). Output: sharpen.txt beside this file."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
from diag_recall import gaussian_blur, generated  # noqa: E402

from attnorm.checkpoints import DEFAULT_GAN_WEIGHTS, load_gan_generator  # noqa: E402
from attnorm.data.procedural import ProceduralShapes  # noqa: E402
from attnorm.metrics.extractors import get_extractor  # noqa: E402
from attnorm.metrics.maths import feature_statistics, frechet_distance, precision_recall  # noqa: E402

torch.set_num_threads(1)
n = 2000
path = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_GAN_WEIGHTS)
ext = get_extractor("classifier")
ref = ext.features(ProceduralShapes(32, 10, pose="centred", seed=0).get_batch(range(n))[0])
m_ref, s_ref = feature_statistics(ref)
G, _ = load_gan_generator(path)
lines = []
for seed in (0, 1, 2):
    x = generated(G, n, seed=seed)
    for amount in (0.0, 0.15, 0.3, 0.5):
        xx = x if amount == 0 else (x + amount * (x - gaussian_blur(x, 0.7))).clamp(-1, 1)
        f = ext.features(xx)
        pr = precision_recall(ref, f, k=3)
        m, s = feature_statistics(f)
        lines.append(f"latents seed {seed} | unsharp amount {amount} (blur 0.7 px) | precision {pr['precision']:.3f} | "
                     f"recall {pr['recall']:.3f} | FID {frechet_distance(m_ref, s_ref, m, s):.3f}")
        print(lines[-1], flush=True)
Path(__file__).with_name("sharpen.txt").write_text(f"# {Path(path).name}, n {n}, torch {torch.__version__}\n"
                                                   + "\n".join(lines) + "\n")
