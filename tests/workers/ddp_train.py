"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (CPU, gloo), or alone.

Trains the tiny BERT with SAMTrainer for 5 steps and saves this rank's weights and SAM counters.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hf_adasam import SAMTrainer, SAMTrainingArguments
from tests._tiny import TokenDataset, tiny_bert


def train(out_dir: str, *, batch: int, sync: bool, policy: str, steps: int = 5, optim: str = "adasam",
          rho: float | None = None, fsdp: bool = False, accum: int = 1) -> SAMTrainer:
    args = SAMTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-2,
        lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, train_sampling_strategy="sequential", dataloader_drop_last=True, optim=optim, sam_rho=rho,
        sam_sync_perturbation=sync, sam_policy=policy, logging_steps=1, gradient_accumulation_steps=accum,
        **(dict(fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]})
           if fsdp else {}),
    )
    trainer = SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(n=80))
    trainer.model_accepts_loss_kwargs = False  # a plain mean loss: compare sizes without Transformers' rescaling
    trainer.train()
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sync", action="store_true")
    ap.add_argument("--policy", default="always")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--optim", default="adasam")
    ap.add_argument("--rho", type=float, default=None)
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--accum", type=int, default=1)
    a = ap.parse_args()
    trainer = train(os.path.dirname(a.out), batch=a.batch, sync=a.sync, policy=a.policy, steps=a.steps, optim=a.optim,
                    rho=a.rho, fsdp=a.fsdp, accum=a.accum)
    rank = trainer.args.process_index
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in trainer.model.parameters()]
    torch.save({"params": [p.detach().clone() for p in full],
                "world_size": trainer.args.world_size,
                "second_passes": trainer.sam.stats.total_second_passes,
                "micro_batches": trainer.sam.stats.total_micro_batches}, f"{a.out}.rank{rank}.pt")
    if dist.is_initialized():
        # Trainer leaves the gloo group up; exiting with it can abort in gloo's threads at interpreter teardown
        # ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489; seen once in CI)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
