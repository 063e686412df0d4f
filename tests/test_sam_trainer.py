"""SAMTrainer: the two-pass step inside Trainer.training_step, against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

import hf_adasam
from hf_adasam import SAMTrainer, SAMTrainingArguments

from ._tiny import TokenDataset, dataset_loss, tiny_bert

GA = 2


def _args(tmp_path, cls=SAMTrainingArguments, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=GA,
                max_steps=3, learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                train_sampling_strategy="sequential", dataloader_drop_last=True)
    base.update(kw)
    return cls(**base)


def _reference(model, ds, opt, *, steps, micro_bs, rho, adaptive=False, eta=0.01, loss_scale=1.0):
    """Hand-written SAM: per micro-batch e from its own gradient, pass-2 gradients summed over the window."""
    params = [p for p in model.parameters() if p.requires_grad]
    i = 0
    for _ in range(steps):
        acc = [torch.zeros_like(p) for p in params]
        for _ in range(GA):
            batch = {k: v[i:i + micro_bs] for k, v in {"input_ids": ds.input_ids, "labels": ds.labels}.items()}
            i += micro_bs
            g = torch.autograd.grad(model(**batch).loss * loss_scale, params)
            with torch.no_grad():
                if adaptive:
                    t = [p.abs() + eta for p in params]
                    tg = [ti * gi for ti, gi in zip(t, g, strict=True)]
                    norm = torch.sqrt(sum((x * x).sum() for x in tg))
                    e = [rho * ti * ti * gi / (norm + 1e-12) for ti, gi in zip(t, g, strict=True)]
                else:
                    norm = torch.sqrt(sum((x * x).sum() for x in g))
                    e = [rho * gi / (norm + 1e-12) for gi in g]
                saved = [p.clone() for p in params]
                for p, ei in zip(params, e, strict=True):
                    p.add_(ei)
            g_sam = torch.autograd.grad(model(**batch).loss * loss_scale, params)
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
                for a, gs in zip(acc, g_sam, strict=True):
                    a.add_(gs)
        for p, a in zip(params, acc, strict=True):
            p.grad = a
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(
    ("optim", "sam_kw", "ref_opt", "ref_kw"),
    [
        ("adasam", {}, lambda ps: hf_adasam.AdaSAM(ps, lr=1e-2), {"rho": 0.05}),
        ("adasam", {"sam_adaptive": True}, lambda ps: hf_adasam.AdaSAM(ps, lr=1e-2), {"rho": 0.5, "adaptive": True}),
        ("adamw_torch", {"sam_rho": 0.1}, lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0), {"rho": 0.1}),
    ],
    ids=["adasam", "adasam-asam", "sam-adamw"],
)
def test_sam_trainer_equals_hand_written_two_pass_loop_float64(optim, sam_kw, ref_opt, ref_kw, tmp_path) -> None:
    ds = TokenDataset(n=48)
    model = tiny_bert(dtype=torch.float64)
    trainer = SAMTrainer(model=model, args=_args(tmp_path, optim=optim, **sam_kw), train_dataset=ds)
    trainer.train()
    # Trainer scales micro-batch losses itself; for BERT (accepts loss kwargs) it sums the micro-batch means
    scale = 1.0 if trainer.model_accepts_loss_kwargs else 1.0 / GA
    ref = tiny_bert(dtype=torch.float64)
    _reference(ref, ds, ref_opt(list(ref.parameters())), steps=3, micro_bs=4, loss_scale=scale, **ref_kw)
    worst = max((a - b).abs().max().item() for a, b in zip(model.parameters(), ref.parameters(), strict=True))
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), tiny_bert(dtype=torch.float64)
                                                              .parameters(), strict=True))
    assert moved > 1e-4 and worst < 1e-10, (moved, worst)


def test_rho_zero_is_bit_identical_to_plain_trainer(tmp_path) -> None:
    ds = TokenDataset(n=48)
    plain = tiny_bert()
    Trainer(model=plain, args=_args(tmp_path, cls=TrainingArguments, optim="adamw_torch", max_steps=5),
            train_dataset=ds).train()
    sam = tiny_bert()
    trainer = SAMTrainer(model=sam, args=_args(tmp_path, optim="adamw_torch", sam_rho=0.0, max_steps=5),
                         train_dataset=ds)
    trainer.train()
    assert trainer.sam is None
    for a, b in zip(plain.parameters(), sam.parameters(), strict=True):
        assert torch.equal(a, b)


class _CountForwards:
    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.n += 1


def test_looksam_k5_pays_six_passes_per_five_steps(tmp_path) -> None:
    model = tiny_bert()
    count = _CountForwards(model)
    args = _args(tmp_path, optim="adasam", sam_policy="looksam", sam_looksam_k=5, max_steps=10,
                 gradient_accumulation_steps=1)
    trainer = SAMTrainer(model=model, args=args, train_dataset=TokenDataset(n=64))
    trainer.train()
    assert count.n == 12  # 2 SAM steps x 2 passes + 8 reuse steps x 1 pass
    assert trainer.sam.stats.total_second_passes == 2


def test_ae_sam_second_passes_follow_the_policy_decisions(tmp_path) -> None:
    model = tiny_bert()
    count = _CountForwards(model)
    args = _args(tmp_path, optim="adasam", sam_policy="ae", max_steps=8)
    trainer = SAMTrainer(model=model, args=args, train_dataset=TokenDataset(n=64))
    trainer.train()
    decisions = trainer.sam.stats.total_second_passes
    micro = 8 * GA
    assert count.n == micro + decisions
    assert 0 < decisions < micro  # with λ=(−1, 1) the expected fraction is about ½


def test_plain_trainer_with_adasam_refuses_to_train_without_second_pass(tmp_path) -> None:
    args = _args(tmp_path, cls=TrainingArguments, optim="adasam")
    with pytest.raises(RuntimeError, match=r"SAMTrainer.*SAMTrainerMixin first.*python -m hf_adasam"):
        Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())  # refused when built
    # rho=0 asks for the base update alone, which plain Trainer can run
    args = _args(tmp_path, cls=TrainingArguments, optim="adasam", optim_args="rho=0")
    Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset()).train()


def test_optim_args_reach_sam_settings(tmp_path) -> None:
    args = _args(tmp_path, cls=TrainingArguments, optim="adasam",
                 optim_args="rho=0.1,policy=ae,ae_delta=0.8,bias_correction=true")
    trainer = SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
    assert trainer.sam_config.rho == 0.1 and trainer.sam_config.policy == "ae"
    trainer.train()
    assert trainer.optimizer.optimizer.defaults["bias_correction"] is True
    assert trainer.sam.policy.delta == 0.8


def test_sam_logs_go_through_trainer_logging(tmp_path) -> None:
    trainer = SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="adasam", max_steps=4),
                         train_dataset=TokenDataset())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["sam_second_pass_fraction"] == 1.0 for h in logs)
    assert all(h["sam_grad_norm"] > 0 and h["sam_perturbation_norm"] == pytest.approx(0.05) for h in logs)


def test_bf16_autocast_trains_with_finite_loss(tmp_path) -> None:
    model, ds = tiny_bert(), TokenDataset()
    args = _args(tmp_path, optim="adasam", bf16=True, max_steps=20, gradient_accumulation_steps=1,
                 per_device_train_batch_size=16, learning_rate=2e-3)
    trainer = SAMTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.float32


def test_bf16_weights_warn(tmp_path) -> None:
    trainer = SAMTrainer(model=tiny_bert(dtype=torch.bfloat16), args=_args(tmp_path, optim="adasam", max_steps=1),
                         train_dataset=TokenDataset())
    with pytest.warns(UserWarning, match="autocast"):
        trainer.train()


def test_fsdp1_and_deepspeed_are_refused_at_start_naming_fsdp2_and_ddp(tmp_path) -> None:
    # FSDP2 is supported since issue 10 (tests/test_fsdp.py); FSDP1 and DeepSpeed stay refused, now naming FSDP2.
    # TrainingArguments accepts fsdp only under a distributed launch; set it afterwards as such a launch would
    args = _args(tmp_path, optim="adasam")
    args.fsdp = ["full_shard"]
    args.fsdp_config = {"version": 1}
    with pytest.raises(ValueError, match=r"FSDP version 1.*Use FSDP2.*or DDP"):
        SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
    args = _args(tmp_path, optim="adasam")
    args.deepspeed = {"zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"DeepSpeed.*Use FSDP2.*DDP"):
        SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())


def test_fsdp2_arguments_pass_sams_start_checks(tmp_path) -> None:
    # (Trainer itself wants a distributed launch for fsdp; the FSDP2 runs are tests/test_fsdp.py's)
    from hf_adasam.transformers_integration.trainer import _refuse_unsupported

    args = _args(tmp_path, optim="adasam")
    args.fsdp = ["full_shard"]
    for config in ({"version": 2}, {}):  # Transformers' default version is 2
        args.fsdp_config = config
        _refuse_unsupported(args)


def test_trains_loss_down(tmp_path) -> None:
    model, ds = tiny_bert(), TokenDataset()
    before = dataset_loss(model, ds)
    args = _args(tmp_path, optim="adasam", max_steps=20, gradient_accumulation_steps=1,
                 per_device_train_batch_size=16, learning_rate=2e-3)
    SAMTrainer(model=model, args=args, train_dataset=ds).train()
    assert dataset_loss(model, ds) < before - 0.05


@pytest.mark.parametrize("policy", ["always", "ae"])
def test_exact_accumulation_batch4_x2_equals_batch8_float64(policy, tmp_path) -> None:
    ds = TokenDataset(n=48)

    def run(**kw):
        model = tiny_bert(dtype=torch.float64)
        trainer = SAMTrainer(model=model, args=_args(tmp_path, optim="adasam", sam_policy=policy, **kw),
                             train_dataset=ds)
        trainer.model_accepts_loss_kwargs = False  # plain mean loss, Trainer divides by the accumulation steps
        trainer.train()
        return model, trainer

    exact, t_exact = run(per_device_train_batch_size=4, gradient_accumulation_steps=2, sam_exact_accumulation=True)
    big, t_big = run(per_device_train_batch_size=8, gradient_accumulation_steps=1)
    per_micro, _ = run(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    worst = max((a - b).abs().max().item() for a, b in zip(exact.parameters(), big.parameters(), strict=True))
    apart = max((a - b).abs().max().item() for a, b in zip(per_micro.parameters(), big.parameters(), strict=True))
    assert worst < 1e-10 and apart > 1e-6, (worst, apart)  # the default per-micro-batch mode is another method
    assert t_exact.sam.stats.total_micro_batches == t_big.sam.stats.total_micro_batches == 3  # one decision a step
    assert t_exact.sam.stats.total_second_passes == t_big.sam.stats.total_second_passes
