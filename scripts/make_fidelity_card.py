"""Measure the independent quality measures of robust_envs.quality.fidelity and write docs/fidelity.md.

Every row is scored by the same :class:`~robust_envs.quality.fidelity.FeatureFidelity`, whose reference is the
*first* half of the Fashion-MNIST test split (5,000 images), so that real images from the *second* half are a
fair real-vs-real row. Rows (``n`` images each unless said):

- real: held-out test images (second half), at ``n`` and at 5,000;
- the embedded DDPM's samples with deterministic DDIM (sigma = 0), the baseline of ``DDIMSigma-v0``
  (``t_c = 20``, stride 50 above it, no attack), and the same ``x_T`` with a constant eta for t <= t_c
  (``action="eta"``) with the env's final reward r_1 against sigma = 0 (embedded levels scorer);
- the held-out real images with Gaussian noise, Gaussian blur, and uniform noise in place of images.

Columns: KID (mean +- std over subsets), FID, PIQE, classifier confidence, and the embedded levels scorer's
mean Q (the quantity behind r_1). The raw numbers go to ``benchmarks/results/fidelity.json``; the page is
generated from that file.

Usage::

    OMP_NUM_THREADS=1 python -m scripts.make_fidelity_card --n 200    # measure, write JSON and page
    python -m scripts.make_fidelity_card --report                    # page from the JSON only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file too
from robust_envs.data import load_fashion_mnist  # noqa: E402
from robust_envs.quality import LevelsEvaluator  # noqa: E402
from robust_envs.quality.fidelity import FeatureFidelity, independent_quality  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fidelity.json"
PAGE = ROOT / "docs" / "fidelity.md"
ETAS = (0.5, 1.0)


def paired_bootstrap(
    fidelity: FeatureFidelity, x0: torch.Tensor, baseline: torch.Tensor, boot: int, seed: int
) -> dict[str, float]:
    """KID and FID differences (schedule - sigma = 0) with their paired-bootstrap std over samples.

    Sample i of both sets shares x_T and the noise draws, so both are resampled with the same indices; ``boot``
    resamples. Duplicates in a resample bias KID and FID alike for both sets; the difference is what is read.
    """
    d_kid = fidelity.kid(x0).mean - fidelity.kid(baseline).mean
    d_fid = fidelity.fid(x0) - fidelity.fid(baseline)
    g = torch.Generator().manual_seed(seed + 1)
    kids, fids = [], []
    for _ in range(boot):
        idx = torch.randint(0, x0.shape[0], (x0.shape[0],), generator=g)
        kids.append(fidelity.kid(x0[idx]).mean - fidelity.kid(baseline[idx]).mean)
        fids.append(fidelity.fid(x0[idx]) - fidelity.fid(baseline[idx]))
    return {"d_kid": d_kid, "d_kid_boot_std": float(np.std(kids, ddof=1)),
            "d_fid": d_fid, "d_fid_boot_std": float(np.std(fids, ddof=1))}  # fmt: skip


def measure(n: int, seed: int, t_c: int, threads: int, boot: int) -> dict[str, Any]:
    from agents.evaluate_sigma import evaluate_policy
    from agents.reference import ConstantAction

    torch.set_num_threads(threads)
    start = time.time()
    test = load_fashion_mnist("test").float_images()
    fidelity = FeatureFidelity(device="cpu", reference=test[:5000], seed=seed)
    levels = LevelsEvaluator()
    held_out = test[5000 : 5000 + n]
    g = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []

    def add(name: str, kind: str, images: torch.Tensor, **extra: Any) -> None:
        images = torch.as_tensor(images).float()
        row = {"images": name, "kind": kind, "n": int(images.shape[0]), **independent_quality(images, fidelity)}
        row["levels_q_mean"] = float(levels(images).mean())
        rows.append({**row, **extra})
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)

    add("real test images (held-out half)", "real", held_out)
    add("real test images (held-out half, all 5,000)", "real", test[5000:])
    env_kwargs = {"t_c": t_c, "stride": 50, "attack": "none", "action": "eta", "evaluator": levels}
    baseline = None
    for eta in ETAS:
        res = evaluate_policy(f"eta={eta:g}", ConstantAction(eta), env_kwargs, n_samples=n, seed=seed, progress=False)
        if baseline is None:
            baseline = torch.as_tensor(res.x0_baseline_all)
            add(f"DDPM samples, DDIM sigma = 0 (t_c = {t_c})", "model", baseline, r1_mean=0.0)
        x0 = torch.as_tensor(res.x0_all)
        add(f"DDPM samples, eta = {eta:g} for t <= {t_c}", "model", x0,
            r1_mean=float(res.r1.mean()), r1_sem=float(res.r1.std(ddof=1) / np.sqrt(len(res.r1))),
            **paired_bootstrap(fidelity, x0, baseline, boot, seed))  # fmt: skip
    for std in (0.05, 0.1, 0.2):
        noisy = (held_out + std * torch.randn(held_out.shape, generator=g)).clamp(0, 1)
        add(f"real + Gaussian noise, std {std:g}", "degraded", noisy)
    for s in (1.0, 2.0):
        add(f"real + Gaussian blur, sigma {s:g} px", "degraded", gaussian_blur(held_out, [11, 11], [s, s]))
    add("uniform noise U(0, 1)", "degraded", torch.rand(held_out.shape, generator=g))
    return {
        "meta": {
            "command": "python -m scripts.make_fidelity_card " + " ".join(sys.argv[1:]),
            "n": n, "seed": seed, "t_c": t_c, "reference": "Fashion-MNIST test[:5000]",
            "held_out": f"Fashion-MNIST test[5000:{5000 + n}]",
            "boot": boot,
            "kid": f"{fidelity.kid_subsets} subsets of min({fidelity.kid_subset_size}, n), cubic polynomial kernel",
            "sampler": f"DDIMSigma-v0 baseline: DDIM sigma = 0, stride 50 above t_c = {t_c}, unit steps below, "
            "attack none; eta rows: action='eta', constant for t <= t_c, same x_T",
            "hardware": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}",
            "wall_time_s": round(time.time() - start, 1),
        },
        "rows": rows,
    }  # fmt: skip


def _fmt_row(r: dict[str, Any]) -> str:
    r1 = f"{r['r1_mean']:+.3f}" + (f" +- {r['r1_sem']:.3f}" if "r1_sem" in r else "") if "r1_mean" in r else "-"
    kid = f"{r['kid_mean']:.2f} +- {r['kid_std']:.2f}"
    conf, q = r["classifier_confidence_mean"], r["levels_q_mean"]
    return f"| {r['images']} | {r['n']} | {kid} | {r['fid']:.2f} | {r['piqe_mean']:.1f} | {conf:.3f} | {q:.3f} | {r1} |"


def _findings(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences computed from the rows: where each measure agrees with the obvious ordering and where not."""
    real = rows[0]
    same_n = [r for r in rows if r["n"] == real["n"]]
    out = []
    degraded = [r for r in same_n if r["kind"] == "degraded"]
    for key, label in (("kid_mean", "KID"), ("fid", "FID")):
        worse = [r["images"] for r in degraded if r[key] <= real[key]]
        out.append(f"- {label}: every degraded set scores worse than the held-out real images"
                   if not worse else f"- {label} rates these degraded sets at least as good as real images: "
                   + "; ".join(worse))  # fmt: skip
    better_piqe = [r["images"] for r in same_n if r["kind"] != "real" and r["piqe_mean"] < real["piqe_mean"]]
    if better_piqe:
        out.append(
            f"- **PIQE disagrees**: lower (better) than the real images' {real['piqe_mean']:.1f} for "
            + "; ".join(better_piqe)
            + ". PIQE averages a distortion score over the spatially active 16 x 16 blocks and gives an image with"
            " none the worst score, 100; a 28 x 28 garment on a flat black background has few active blocks, and"
            " added noise makes more of them active."
        )
    conf_better = [
        r["images"]
        for r in same_n
        if r["kind"] != "real" and r["classifier_confidence_mean"] >= real["classifier_confidence_mean"]
    ]
    if conf_better:
        out.append(
            "- Classifier confidence is at least the real images' for: "
            + "; ".join(conf_better)
            + " (confidence is not realism: a classifier can be sure about an unrealistic image)."
        )
    model = [r for r in same_n if r["kind"] == "model"]
    if model:
        base = model[0]
        for r in model[1:]:
            verdict = []
            for key, label in (("kid", "KID"), ("fid", "FID")):
                d, sd = r[f"d_{key}"], r[f"d_{key}_boot_std"]
                word = "indistinguishable" if abs(d) < 2 * sd else ("better" if d < 0 else "worse")
                verdict.append(f"{label} {word} (difference {d:+.2f} +- {sd:.2f}, paired bootstrap std)")
            d_piqe = r["piqe_mean"] - base["piqe_mean"]
            caveat = ", which also favours added noise" if better_piqe and d_piqe < 0 else ""
            verdict.append(f"PIQE {'better' if d_piqe < 0 else 'worse'} ({d_piqe:+.1f}{caveat})")
            d_conf = r["classifier_confidence_mean"] - base["classifier_confidence_mean"]
            verdict.append(f"confidence {'higher' if d_conf > 0 else 'lower'} ({d_conf:+.3f})")
            prefers = "prefers" if r["r1_mean"] > 0 else "does not prefer"
            share = -r["d_kid"] / (base["kid_mean"] - real["kid_mean"])
            out.append(
                f"- {r['images']} against sigma = 0: r_1 = {r['r1_mean']:+.3f} (levels scorer {prefers} it); "
                + ", ".join(verdict)
                + f". The KID change closes {100 * share:.1f}% of the sigma = 0 samples' KID gap to real images."
            )
    return out


def render_page(data: dict[str, Any]) -> str:
    """The Markdown page for the JSON record ``data`` (``{"meta": ..., "rows": [...]}``)."""
    meta, rows = data["meta"], data["rows"]
    lines = [
        "# Independent quality measures (KID, FID, PIQE, classifier confidence)",
        "",
        f"Generated by `{meta['command'].strip()}` from `benchmarks/results/fidelity.json` "
        f"({meta['wall_time_s']:.0f} s on {meta['hardware']}).",
        "",
        "The reward of `DDIMSigma-v0` comes from the embedded levels scorer, one small network a schedule can learn",
        "to please. `robust_envs.quality.fidelity` scores a set of final images with measures that share nothing",
        "with it and run offline (no hub, no download), and `python -m benchmarks.sigma_benchmark` reports them",
        "next to r_1 ([sigma_benchmark.md](sigma_benchmark.md)):",
        "",
        "- **KID** (Binkowski et al. 2018) and **FID** (Heusel et al. 2017) over the 84 penultimate features of the",
        "  embedded Fashion-MNIST LeNet-5 ([card](../robust_envs/assets/fmnist_features/CARD.md)), against real",
        "  test images (torchmetrics' implementations with that network as the feature extractor). Lower is better.",
        "  KID is unbiased (about 0 for two real sets, can be negative); FID grows as n shrinks, so compare FIDs at",
        "  equal n. Both are in squared feature units, not comparable with Inception-based values elsewhere.",
        "- **PIQE** (Venkatanath et al. 2015; pyiqa `piqe`, no learnt weights), 0..100, lower is better.",
        "- **classifier confidence**: mean largest softmax probability of the same LeNet-5.",
        "- **levels Q**: the embedded levels scorer (1..5, higher better), the env's reward model:",
        "  r_1 = Q(agent) - Q(sigma = 0).",
        "",
        f"Reference: {meta['reference']}; real rows: {meta['held_out']} (never in the reference). KID: {meta['kid']}.",
        f"Model rows: {meta['sampler']}; {meta['n']} samples, seeds {meta['seed']}..{meta['seed'] + meta['n'] - 1}.",
        "",
        "| images | n | KID (mean +- std over subsets) | FID | PIQE | confidence | levels Q | r_1 (+- s.e.) |",
        "|---|---|---|---|---|---|---|---|",
        *(_fmt_row(r) for r in rows),
        "",
        "## Where the measures agree and where they do not",
        "",
        f"Computed from the rows at n = {rows[0]['n']}:",
        "",
        *_findings(rows),
        "",
        "Schedule rows: KID and FID differences against sigma = 0 with a paired bootstrap over the",
        f"{meta['n']} samples ({meta['boot']} resamples); a difference within 2 bootstrap std is called",
        "indistinguishable.",
        "",
        "Limits: one feature classifier (one training seed) defines KID and FID, so a schedule could in principle",
        "game it too; the bootstrap covers the choice of samples only. The model rows run without an attack; under",
        "a threat use `python -m benchmarks.sigma_benchmark`, which reports these measures per cell.",
        "",
        "Read KID and FID as the primary independent check of a schedule (they compare with real images), PIQE only",
        "as a second opinion on sharpness, and confidence as a sanity check. The KID std is the spread over subsets",
        "of one image set, not a confidence interval over seeds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images per row (and DDPM samples per schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t-c", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--boot", type=int, default=50, help="paired bootstrap resamples for the schedule rows")
    parser.add_argument("--report", action="store_true", help="only regenerate the page from the JSON")
    args = parser.parse_args(argv)
    if args.report:
        data = json.loads(RESULTS.read_text())
    else:
        data = measure(args.n, args.seed, args.t_c, args.threads, args.boot)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(RESULTS)
    text = render_page(data)
    PAGE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
