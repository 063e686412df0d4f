"""Every optimizer through ``SAMTrainer`` where users meet it: LoRA (adapters start with B = 0, so A's first
gradients are exactly zero) and fp16 with a GradScaler whose first scale overflows."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

import hf_adasam
from hf_adasam import SAMTrainer, SAMTrainingArguments

from ._tiny import TokenDataset, tiny_bert

# learning rates on each optimizer's own scale (Adai and CProp-SGD step on SGD's scale)
LR = {"adai": 0.1, "adaiw": 0.1, "cprop_sgd": 0.5}
STEPS = 30


def _args(tmp_path, **kw) -> SAMTrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=STEPS, learning_rate=1e-2,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1,
                lr_scheduler_type="constant")
    base.update(kw)
    return SAMTrainingArguments(**base)


class _StepWatch(TrainerCallback):
    """Largest change of any watched entry in one optimizer step."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.params = params
        self.last = {n: p.detach().clone() for n, p in params.items()}
        self.largest: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        moves = [(p.detach() - self.last[n]).abs().max().item() for n, p in self.params.items()]
        self.largest.append(max(moves))
        self.last = {n: p.detach().clone() for n, p in self.params.items()}


# AdaShift, as the authors' code computes it, normalises m (the last n gradients) by v from gradients n
# steps older. On LoRA the adapters' gradients grow by orders of magnitude in the first steps (A's is
# ~1e-13 under SAM while B is still ~0, then ~1e-3), so when v first fills its step is m/sqrt(v) >> 1:
# measured 131 (13,000 lr) in one step with n=10 under SAM, 0.49 (49 lr) without SAM. Recorded, not hidden.
ADASHIFT_ON_LORA = pytest.mark.xfail(strict=True, reason="AdaShift's delayed v lags LoRA's growing gradients "
                                     "(docs/numerics.md#adashift-and-lora)")


@pytest.mark.parametrize("optim", [pytest.param(o, marks=ADASHIFT_ON_LORA) if o == "adashift" else o
                                   for o in sorted(hf_adasam.OPTIMIZERS)])
def test_every_optimizer_trains_lora_adapters_under_sam(tmp_path, optim: str) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=4,
                                                             target_modules=["query", "value"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert any("lora_A" in n for n in adapters) and any("lora_B" in n for n in adapters)
    watch = _StepWatch(adapters)
    lr = LR.get(optim, 1e-2)
    args = _args(tmp_path, optim=optim, learning_rate=lr, optim_args="rho=0.05")
    trainer = SAMTrainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[watch])
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{optim}: loss did not go down: {losses}"
    assert all(h["sam_second_pass_fraction"] == 1.0 for h in trainer.state.log_history if "loss" in h)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"{optim}: frozen base weight {n} changed"
    if optim not in LR:  # normalised steps: every A moves once B has (on SGD's scale A's tiny gradient may not)
        assert all(not torch.equal(adapters[n], before[n]) for n in adapters if "lora_A" in n)
    assert max(watch.largest) <= 10 * lr, f"{optim}: an adapter entry moved {max(watch.largest):.3g} in one step"


def test_fp16_grad_scaler_overflow_skips_the_perturbation_and_the_step(tmp_path) -> None:
    """On CPU, Accelerate runs ``--fp16`` without a GradScaler (``accelerator.scaler is None``, accelerate
    1.15), so the scaler path is driven here with torch.amp's CPU GradScaler put where Accelerate keeps its
    own. Pass 1 of the first micro-batch overflows (a hook makes one gradient inf, as an fp16 overflow
    does): that micro-batch skips the perturbation (counted), the scaler skips the optimizer step and
    halves its scale, the weights stay put, and training continues."""
    model = tiny_bert()
    args = _args(tmp_path, optim="adasam", fp16=True, max_steps=4, learning_rate=1e-3)
    trainer = SAMTrainer(model=model, args=args, train_dataset=TokenDataset())
    if trainer.accelerator.scaler is None:
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    init_scale = trainer.accelerator.scaler.get_scale()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    backwards = []

    def overflow_first_backward(grad: torch.Tensor) -> torch.Tensor:
        backwards.append(1)
        return torch.full_like(grad, math.inf) if len(backwards) == 1 else grad

    model.classifier.weight.register_hook(overflow_first_backward)

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.unchanged = all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
                self.scale = trainer.accelerator.scaler.get_scale()

    first = FirstStep()
    trainer.add_callback(first)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["sam_skipped_perturbations"] == 1 and logs[0]["sam_second_pass_fraction"] == 0.0
    assert first.unchanged, "the optimizer stepped on an overflowed gradient"
    assert first.scale == init_scale / 2  # GradScaler's backoff
    assert all(h["sam_skipped_perturbations"] == 0 and h["sam_second_pass_fraction"] == 1.0 for h in logs[1:])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters())
