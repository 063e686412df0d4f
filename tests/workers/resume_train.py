"""Run by tests/test_resume.py: SAMTrainer (adasam + a policy) that saves every 3 steps, and either
SIGKILLs itself after step 4 (``--kill``), resumes from a checkpoint (``--resume``), or runs through."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hf_adasam import SAMTrainer, SAMTrainingArguments
from tests._tiny import TokenDataset, tiny_bert


class KillAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final save: as a pre-empted job dies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--policy", default="ae")
    ap.add_argument("--kill", type=int, default=0)
    ap.add_argument("--resume", default=None)
    a = ap.parse_args()
    args = SAMTrainingArguments(
        output_dir=a.out, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=8,
        learning_rate=1e-2, warmup_steps=2, save_strategy="steps", save_steps=3, report_to=[], use_cpu=True,
        seed=0, disable_tqdm=True, optim="adasam", sam_policy=a.policy, sam_looksam_k=3, logging_steps=1,
    )
    trainer = SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(n=40),
                         callbacks=[KillAfter(a.kill)] if a.kill else None)
    trainer.train(resume_from_checkpoint=a.resume)
    torch.save({"params": [p.detach() for p in trainer.model.parameters()],
                "policy": trainer.sam.policy.state_dict(), "second_passes": trainer.sam.stats.total_second_passes},
               os.path.join(a.out, "final.pt"))


if __name__ == "__main__":
    main()
