"""Which convolutions of gan_cpu_small's G and D get an input (forward) or output gradient (backward) that is not
channels-last, with attention "none" and "an", over two training steps (session 41; results in README.md here).

    OMP_NUM_THREADS=1 python benchmarks/results/an_cpu_s41/layout_probe.py
"""
import json, tempfile, torch
from torch import nn
from attnorm.training.gan import GANTraining, resolve_config
torch.set_num_threads(1)
cfg = json.load(open("configs/gan_cpu_small.json"))
cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
for att in ("none", "an"):
    cfg2 = dict(cfg, attention=att, amp=False, steps=2, log_every=1, ckpt_every=0, sample_every=0)
    t = GANTraining(resolve_config(overrides=cfg2), tempfile.mkdtemp())
    rows = []
    def fwd(name):
        def h(m, inp, out):
            x = inp[0]
            rows.append(("fwd", name, tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()))
        return h
    def bwd(name):
        def h(m, gin, gout):
            g = gout[0]
            if g is not None:
                rows.append(("bwd", name, tuple(g.shape), g.is_contiguous(memory_format=torch.channels_last), g.is_contiguous()))
        return h
    for net, mod in (("G", t.G), ("D", t.D)):
        for n, m in mod.named_modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(fwd(net + "." + n)); m.register_full_backward_hook(bwd(net + "." + n))
    t.run()
    bad = [r for r in rows if not r[3] and r[2][2] * r[2][3] > 1]
    print(att, "conv calls", len(rows), "not channels-last:", len(bad))
    seen = set()
    for r in bad:
        if (r[0], r[1]) not in seen:
            seen.add((r[0], r[1])); print("   ", r)
