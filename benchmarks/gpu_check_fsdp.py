"""FSDP2 checks that need a GPU: SAMTrainer under Transformers/Accelerate's FSDP2, and the compiled kernels on shards.

On CPU Transformers/Accelerate run a ``fsdp=`` Trainer as DDP (``MULTI_CPU``), so ``tests/test_fsdp.py`` tests
the step under ``fully_shard`` directly (2 ranks, gloo); this script checks the Trainer-level path on one CUDA
device. One GPU cannot host two NCCL ranks, so FSDP2 runs with world size 1 (``torchrun --nproc_per_node 1``):
the parameters are DTensors and every code path of the sharded step runs (local shards, the all-reduce of the
sums of squares, FSDP2's reduce-scatter, Accelerate's FSDP2 ``no_sync``, sharded checkpoints), while the
2-rank arithmetic is the CPU test's. Run (about 3-5 minutes, most of it compiling)::

    python benchmarks/gpu_check_fsdp.py            # prints a JSON summary; exit status 1 if a check failed

Checks:

1. ``trainer``: SAMTrainer (SGD and AdaSAM, SAM and the AE-SAM policy, accumulation 2, 5 steps) with
   ``fsdp=True, fsdp_config={"version": 2, ...}`` equals the same run without FSDP (a separate process on the
   same GPU): 1e-5 of the distance moved for SGD; AdaSAM is reported (m/√v magnifies rounding).
   Also asserts that FSDP2 really ran (Accelerate's plugin version 2, DTensor parameters, the sharded SAM path).
2. ``resume``: the FSDP2 Trainer run saved at step 2 and resumed equals the uninterrupted run (max |diff|).
3. ``compiled``: the compiled kernels of the optimizers with whole-tensor statistics (Adai, AdaShift φ=max/mean,
   SET-Adam) and AdaSAM on FSDP2 shards against the unsharded compiled run (tests/workers/fsdp_train.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {"sgd_always": ("sgd", "always"), "adasam_ae": ("adasam", "ae")}


def train(out_dir: str, optim: str, policy: str, fsdp: bool, steps: int = 5, resume: str | None = None,
          save: bool = False):

    from hf_adasam import SAMTrainer, SAMTrainingArguments
    from tests._tiny import TokenDataset, tiny_bert

    args = SAMTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=steps,
        learning_rate=1e-2, lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], seed=0,
        disable_tqdm=True, train_sampling_strategy="sequential", dataloader_drop_last=True, optim=optim,
        sam_rho=0.05, sam_policy=policy, logging_steps=1,
        save_strategy="steps" if save else "no", save_steps=2,
        **(dict(fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]})
           if fsdp else {}),
    )
    trainer = SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(n=200))
    trainer.model_accepts_loss_kwargs = False
    trainer.train(resume_from_checkpoint=resume)
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in trainer.model.parameters()]
    info = {"params": [p.detach().float().cpu() for p in params],
            "fsdp_version": getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "fsdp_version", None),
            "dtensor": type(next(trainer.model.parameters())).__name__,
            "sam_sharded": trainer.sam.sharded, "second_passes": trainer.sam.stats.total_second_passes}
    return info


def worker(mode: str, out: str) -> None:
    import torch

    res = {}
    if mode == "compiled":
        import torch.distributed as dist

        from tests.workers.fsdp_train import check_optimizers

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
        check_optimizers(res, ["adasam", "set_adam", "adai", "adaiw", "adashift_max", "adashift_mean"],
                         ["compiled"], device="cuda")
        dist.destroy_process_group()
    else:
        fsdp = mode != "ref"
        with tempfile.TemporaryDirectory() as tmp:
            for case, (optim, policy) in CASES.items():
                res[case] = train(os.path.join(tmp, case), optim, policy, fsdp)
            if fsdp:  # resume: 4 steps saving at 2, then from checkpoint-2 to 4
                full = train(os.path.join(tmp, "r"), "adasam", "looksam", True, steps=4, save=True)
                resumed = train(os.path.join(tmp, "r"), "adasam", "looksam", True, steps=4,
                                resume=os.path.join(tmp, "r", "checkpoint-2"))
                res["resume_max_abs_diff"] = max((a - b).abs().max().item()
                                                 for a, b in zip(full["params"], resumed["params"], strict=True))
    torch.save(res, out)


def run(mode: str, out: str, torchrun: bool) -> None:
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--nproc_per_node", "1"] if torchrun else []),
           os.path.abspath(__file__), "--worker", mode, out]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_check_fsdp.py needs a CUDA device (the CPU checks are tests/test_fsdp.py)")
    summary, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: os.path.join(tmp, f"{m}.pt") for m in ("ref", "fsdp", "compiled")}
        run("ref", paths["ref"], torchrun=False)
        run("fsdp", paths["fsdp"], torchrun=True)
        run("compiled", paths["compiled"], torchrun=True)
        ref, fsdp, comp = (torch.load(paths[m], weights_only=False) for m in ("ref", "fsdp", "compiled"))
    start = None
    for case in CASES:
        a, b = fsdp[case], ref[case]
        if start is None:
            from tests._tiny import tiny_bert
            start = [p.detach() for p in tiny_bert().parameters()]
        moved = max((p - s).abs().max().item() for p, s in zip(b["params"], start, strict=True))
        dev = max((p - q).abs().max().item() for p, q in zip(a["params"], b["params"], strict=True)) / moved
        ran_fsdp2 = a["fsdp_version"] == 2 and a["dtensor"] == "DTensor" and a["sam_sharded"] is True
        passed = ran_fsdp2 and (dev <= 1e-5 if case.startswith("sgd") else True)
        ok &= passed
        summary[f"trainer/{case}"] = dict(dev=dev, moved=moved, ran_fsdp2=ran_fsdp2, passed=passed,
                                          second_passes=(a["second_passes"], b["second_passes"]))
    summary["resume_max_abs_diff"] = fsdp["resume_max_abs_diff"]
    for key, res in comp.items():
        passed = res["dev"] <= 1e-5 or res["dev_vs_float64"] <= 1.5 * res["ref_vs_float64"]
        ok &= passed
        summary[key] = {**res, "passed": passed}
    print(json.dumps(summary, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
