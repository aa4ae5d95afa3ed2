"""Calibration (issue 6): short training runs on Fashion-MNIST, timing and PGD-20 Linf accuracy."""
import sys, time, json, logging
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
import torchattacks
from benchmarks.trainers import get_trainer
from robust_envs.data import load_dataset
method = sys.argv[1]; overrides = json.loads(sys.argv[2])
train = load_dataset("fashion_mnist", "train"); test = load_dataset("fashion_mnist", "test")
tr = get_trainer(method)
cfg = tr.default_config("fashion_mnist", **overrides)
print(cfg, flush=True)
t0 = time.perf_counter()
model = tr(cfg).train(train, seed=0, on_epoch=lambda e, l: print(f"epoch {e} loss {l:.4f} t={time.perf_counter()-t0:.0f}s", flush=True))
tt = time.perf_counter() - t0
g = torch.Generator().manual_seed(0); idx = torch.randperm(len(test.labels), generator=g)[:500]
x, y = test.float_images()[idx], test.labels[idx]
torch.manual_seed(0)
with torch.no_grad(): clean = (model(x).argmax(1) == y).float().mean().item()
adv = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=20, random_start=True)(x, y)
with torch.no_grad(): rob = (model(adv).argmax(1) == y).float().mean().item()
out = {"method": method, "overrides": overrides, "train_time_s": tt, "clean": clean, "pgd20_linf": rob}
if hasattr(tr, "extra_metrics") and method.startswith("dverge"):
    from types import SimpleNamespace
    ex = tr(cfg).extra_metrics(model, SimpleNamespace(images=x[:200], labels=y[:200]), "fashion_mnist", SimpleNamespace(attack_seed=0))
    out["extra"] = ex
print(json.dumps(out), flush=True)
