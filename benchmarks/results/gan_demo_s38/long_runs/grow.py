"""grow.py SRC_CKPT SRC_CONFIG OUT_RUN KEY=VALUE...: a training checkpoint of SRC's run with the config changed by the
overrides (e.g. g_upsample=shuffle), the new parameters at their init, everything else (weights, EMA, Adam moments by
parameter name, data, loss, rng, step) carried over."""
import sys
from pathlib import Path
from attnorm.cli.common import parse_overrides
from attnorm.training.gan import GANTraining, resolve_config
from attnorm.checkpoints import load_checkpoint

src, src_cfg, out = sys.argv[1:4]
cfg = resolve_config(src_cfg, parse_overrides(sys.argv[4:]))
out = Path(out); (out / "checkpoints").mkdir(parents=True, exist_ok=True)
t = GANTraining(cfg, out)
t.write_config()
state = load_checkpoint(src, "cpu")
loop = t.loop
new = {}
for k, m in loop.modules.items():
    r = m.load_state_dict(state["modules"][k], strict=False)
    assert not r.unexpected_keys, r.unexpected_keys
    new[k] = set(r.missing_keys)
    print(k, "new:", r.missing_keys)
r = loop.ema.shadow.load_state_dict(state["ema"]["shadow"], strict=False)
assert set(r.missing_keys) == new["G"]
loop.ema.num_updates = state["ema"]["num_updates"]
ids = {}
for p in loop.phases:
    mod = loop.modules[p.name]
    pid = {id(q): n for n, q in mod.named_parameters()}
    new_order = [pid[id(q)] for g in p.optimizer.param_groups for q in g["params"]]
    old_order = [n for n in new_order if n not in new[p.name]]
    sd = state["optimizers"][p.name]
    assert len(old_order) == sum(len(g["params"]) for g in sd["param_groups"])
    mine = p.optimizer.state_dict()
    old_idx = [i for g in sd["param_groups"] for i in g["params"]]
    new_idx = [i for g in mine["param_groups"] for i in g["params"]]
    where = {n: new_idx[j] for j, n in enumerate(new_order)}
    mine["state"] = {where[old_order[j]]: sd["state"][i] for j, i in enumerate(old_idx) if i in sd["state"]}
    for g_new, g_old in zip(mine["param_groups"], sd["param_groups"]):
        g_new.update({k: v for k, v in g_old.items() if k != "params"})
    p.optimizer.load_state_dict(mine)
    print(p.name, "optimizer states carried", len(mine["state"]), "of", len(new_order))
loop.data.load_state_dict(state["data"])
if state.get("loss") is not None:
    loop.loss.load_state_dict(state["loss"])
from attnorm.training.loop import set_rng_state
set_rng_state(state["rng"])
loop.step, loop.elapsed = int(state["step"]), float(state["elapsed"])
loop.save_checkpoint()
print("wrote", loop.checkpoint_path, "step", loop.step)
