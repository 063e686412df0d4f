"""SAMTrainer with the rest of the stack: PEFT/LoRA, the launcher for unmodified scripts, label
smoothing, Seq2SeqTrainer, fp16 (CUDA only)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_adasam import SAMSeq2SeqTrainer, SAMSeq2SeqTrainingArguments, SAMTrainer, SAMTrainingArguments

from ._tiny import TokenDataset, tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def _args(tmp_path, cls=SAMTrainingArguments, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-2,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)
    base.update(kw)
    return cls(**base)


def test_lora_trains_adapters_only_and_perturbs_only_them(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    model = peft.get_peft_model(tiny_bert(), config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SAMTrainer(model=model, args=_args(tmp_path, optim="adasam"), train_dataset=TokenDataset())
    trainer.train()
    assert trainer.sam.stats.total_second_passes == 4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in trainer._sam_params} == {id(p) for n, p in model.named_parameters() if n in trainable}
    lora = [n for n in trainable if "lora_" in n]
    assert lora, "no adapter weights found"
    for n, p in model.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), f"frozen base weight {n} changed"
    assert all(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in lora if "lora_B" in n)


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from transformers import HfArgumentParser, Trainer, TrainingArguments
from tests._tiny import TokenDataset, tiny_bert

(args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
trainer.train()
print("RESULT", type(trainer).__name__, trainer.sam.stats.total_second_passes, trainer.sam_config.policy)
"""


@pytest.mark.slow
def test_launcher_runs_an_unmodified_hf_argument_parser_script_with_sam(tmp_path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=str(ROOT))))
    cmd = [sys.executable, "-m", "hf_adasam", str(script), "--output_dir", str(tmp_path / "out"), "--optim", "adasam",
           "--optim_args", "policy=looksam,looksam_k=2", "--max_steps", "4", "--per_device_train_batch_size", "8",
           "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    assert line.split()[1:] == ["SAMTrainer", "2", "looksam"]  # LookSAM k=2: SAM at steps 0 and 2


def test_launcher_without_a_script_prints_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "hf_adasam"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage: python -m hf_adasam path/to/script.py" in proc.stdout


def test_label_smoothing_survives_two_passes_over_one_inputs_dict(tmp_path) -> None:
    # compute_loss pops "labels" when label smoothing is on: each pass must get its own dict
    trainer = SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="adasam", label_smoothing_factor=0.1),
                         train_dataset=TokenDataset())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert trainer.sam.stats.total_second_passes == 4


class _Seq2SeqData(torch.utils.data.Dataset):
    """Copy task on a tiny vocabulary."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(2, 30, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.x[i]}


def test_seq2seq_trainer_variant_runs_sam_on_a_tiny_t5(tmp_path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = T5ForConditionalGeneration(cfg)
    args = _args(tmp_path, cls=SAMSeq2SeqTrainingArguments, optim="adamw_torch", sam_rho=0.05, sam_policy="ae",
                 max_steps=6)
    trainer = SAMSeq2SeqTrainer(model=model, args=args, train_dataset=_Seq2SeqData())
    trainer.train()
    assert 0 < trainer.sam.stats.total_second_passes <= 6
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 GradScaler needs CUDA")
def test_fp16_grad_scaler_trains_and_skips_nonfinite_perturbations(tmp_path) -> None:
    model = tiny_bert()
    args = _args(tmp_path, optim="adasam", fp16=True, use_cpu=False, max_steps=20, learning_rate=2e-3)
    trainer = SAMTrainer(model=model, args=args, train_dataset=TokenDataset())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(h["loss"]) for h in logs)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the GradScaler starts at 2**16 and overflows in its first steps: those micro-batches skip the
    # perturbation (counted), and the scaler skips the optimizer step
    assert sum(h["sam_skipped_perturbations"] for h in logs) + trainer.sam.stats.total_second_passes == 20
