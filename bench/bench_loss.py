"""Forward+backward time of the MEC coding length against its alternatives.

    python bench/bench_loss.py [--device cpu|cuda] [--repeats N] [--sizes M:D ...] [--json]

Columns: ours = mec_core.loss.coding_length(order=4, form="auto");
eq3 = the straightforward Eq. 3 code (sum of explicit matrix powers, m x m, as in the
reference implementation); slogdet = exact log-det (Eq. 1) of the smaller matrix;
floor = the single Gram product of the smaller form, forward and backward, which every
implementation pays. Errors are relative to eq3 (same series) and to the exact value.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mec_core.loss import coding_length, mec_lambda

SIZES = [(256, 2048), (1024, 2048), (4096, 2048), (1024, 256), (4096, 512)]


def eq3(z1, z2, lam, order=4):
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    c = lam * a @ b.T
    power, total = c, torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        total = total + (-1) ** (k + 1) / k * power
    return torch.trace(total)


def floor(z1, z2, lam):
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    c = lam * (a @ b.T if z1.shape[0] <= z1.shape[1] else b.T @ a)
    return c.sum()


def timed(fn, z1, z2, repeats, device):
    def once():
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        value = fn(a, b)
        value.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return value.item()

    once()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        value = once()
        best = min(best, time.perf_counter() - start)
    return best, value


def views(m, d, device, seed=0):
    """Two correlated views with a decaying spectrum, like trained projector outputs."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1).float() ** -0.25
    z = torch.randn(m, d, generator=g) * scale
    return z.to(device), (0.8 * z + 0.6 * torch.randn(m, d, generator=g) * scale).to(device)


def _size(text: str) -> tuple[int, int]:
    m, _, d = text.partition(":")
    return int(m), int(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=_size, nargs="+", default=SIZES, metavar="M:D")
    parser.add_argument("--json", action="store_true", help="print one JSON record of the rows")
    args = parser.parse_args()
    rows = []
    for m, d in args.sizes:
        z1, z2 = views(m, d, args.device)
        lam = mec_lambda(m, d, 64.0)
        runs = {
            "ours": lambda a, b, lam=lam: coding_length(a, b, lam, order=4),
            "eq3": lambda a, b, lam=lam: eq3(a, b, lam),
            "slogdet": lambda a, b, lam=lam: coding_length(a, b, lam),
            "floor": lambda a, b, lam=lam: floor(a, b, lam),
        }
        (t_ours, v_ours), (t_eq3, v_eq3), (t_det, _), (t_floor, _) = (
            timed(fn, z1, z2, args.repeats, args.device) for fn in runs.values())
        exact = coding_length(z1.double(), z2.double(), lam).item()
        rows.append({"m": m, "d": d, "ours_ms": 1e3 * t_ours, "eq3_ms": 1e3 * t_eq3,
                     "slogdet_ms": 1e3 * t_det, "floor_ms": 1e3 * t_floor,
                     "rel_diff_eq3": abs(v_ours - v_eq3) / abs(v_eq3),
                     "rel_err_exact": abs(v_ours - exact) / exact})
    if args.json:
        print(json.dumps({"device": args.device, "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "rows": rows}))
        return
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'m':>5} {'d':>5} | {'ours ms':>9} {'eq3 ms':>9} {'slogdet ms':>10} {'floor ms':>9} | "
          f"{'eq3/ours':>8} {'ours/floor':>10} | {'rel.err eq3':>11} {'rel.err exact':>13}")
    for r in rows:
        print(f"{r['m']:>5} {r['d']:>5} | {r['ours_ms']:>9.2f} {r['eq3_ms']:>9.2f} "
              f"{r['slogdet_ms']:>10.2f} {r['floor_ms']:>9.2f} | "
              f"{r['eq3_ms'] / r['ours_ms']:>8.2f} {r['ours_ms'] / r['floor_ms']:>10.2f} | "
              f"{r['rel_diff_eq3']:>11.1e} {r['rel_err_exact']:>13.1e}")


if __name__ == "__main__":
    main()
