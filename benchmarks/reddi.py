"""Generic Adam, Adam and AMSGrad on Reddi et al.'s counterexample: a plot of x_t
(docs/theory.md#reddi-et-als-counterexample).

    python benchmarks/reddi.py          # writes benchmarks/results/reddi.{json,md,png}

On [-1, 1], f_t(x) = C·x when t mod 3 = 1, else -x (C = 3; optimum x = -1). Adam (β2 = 0.1) drifts to
+1; AMSGrad and Generic Adam with θ_t = 1 - 1/t (which meets Zou et al.'s sufficient condition) go to -1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_adasam.generic_adam_theory import reddi_counterexample

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--out", default=str(RESULTS / "reddi"))
    a = ap.parse_args()
    res = reddi_counterexample(steps=a.steps)
    final = res.final
    lines = [f"# Reddi et al.'s counterexample, C = 3, β1 = 0, β2 = 0.1, α_t = 0.5/√t, {a.steps} steps", "",
             "| method | x after 1 step | x at the end | (optimum −1) |", "|---|---:|---:|---|"]
    for name, label in (("adam", "Adam"), ("amsgrad", "AMSGrad"), ("generic", "Generic Adam, θ_t = 1 − 1/t")):
        traj = getattr(res, name)
        lines.append(f"| {label} | {traj[1]:.6f} | {final[name]:.4f} | |")
    md = "\n".join(lines)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"steps": a.steps, "final": final,
                                                    "first_step": {k: float(getattr(res, k)[1]) for k in final}},
                                                   indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (("adam", "Adam"), ("amsgrad", "AMSGrad"), ("generic", "Generic Adam (θ_t = 1 − 1/t)")):
        ax.plot(getattr(res, name), label=label, lw=1)
    ax.axhline(-1, color="k", ls=":", lw=0.8)
    ax.set(xscale="log", xlabel="step t", ylabel="x_t", ylim=(-1.05, 1.05),
           title="Reddi et al.'s counterexample (C = 3, β2 = 0.1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
