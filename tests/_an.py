"""An AttentiveNorm moved away from its identity init, shared by the layer's test files."""

import torch

from attnorm.layers import AttentiveNorm


def an_layer(c=16, n=6, dtype=torch.float64, seed=0, rn_weight_range=None, **kw):
    """AttentiveNorm(c, n) in ``dtype`` with every term mattering: sigma 0.8, random affine (the
    scale standard normal, or uniform in ``rn_weight_range``), SSR weights drawn away from 0 and its
    query/key scaled up to compare with the entity term."""
    torch.manual_seed(seed)
    layer = AttentiveNorm(c, num_entities=n, **kw).to(dtype)
    with torch.no_grad():  # move away from the identity init so every term matters
        layer.sigma.fill_(0.8)
        if layer.affine:
            if rn_weight_range is None:
                layer.rn_weight.normal_()
            else:
                layer.rn_weight.uniform_(*rn_weight_range)
            layer.rn_bias.normal_()
        if layer.self_sampling:
            layer.ssr_alpha.uniform_(0.2, 0.9)
            # make the SSR term comparable to the entity term (default init is small)
            layer.query.mul_(3)
            layer.key.mul_(3)
    return layer
