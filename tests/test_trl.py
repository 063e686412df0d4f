"""SAM under TRL's trainers as users write them: ``class T(SAMTrainerMixin, XTrainer)`` built with keywords.

Tiny random-init Llama models and a character tokenizer (tests/_tiny_lm.py), CPU, a few steps. For each trainer:
SAM runs (two training forwards per micro-step, counted by a hook on a LoRA layer), the loss is finite and falls,
a run resumed from a checkpoint ends on the uninterrupted run's LoRA weights, and TRL's own metrics count the first
(unperturbed) pass only: they equal a plain TRL run's where both runs sit on the same weights.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

from hf_adasam import SAMTrainerMixin  # noqa: E402

from ._tiny_lm import char_tokenizer, tiny_classifier, tiny_lm  # noqa: E402

TEXTS = ["the cat sat on the mat.", "a dog runs in the park.", "two men play chess.", "a girl reads a book."]
STEPS, SAVE_AT = 6, 3


class SAMSFT(SAMTrainerMixin, trl.SFTTrainer):
    pass


class SAMDPO(SAMTrainerMixin, trl.DPOTrainer):
    pass


class SAMGRPO(SAMTrainerMixin, trl.GRPOTrainer):
    pass


class SAMReward(SAMTrainerMixin, trl.RewardTrainer):
    pass


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def a_count(completions, **_):
    """GRPO's reward: how many 'a's the completion has."""
    return [float(c.count("a")) for c in completions]


def _common(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=STEPS, learning_rate=1e-2,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                data_seed=0, disable_tqdm=True, optim="adasam", gradient_checkpointing=False)  # TRL's default is on:
    # its recomputation would run the counted layer again in backward
    base.update(kw)
    return base


def _lora(task: str = "CAUSAL_LM"):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task,
                           lora_dropout=0.0)


def build(kind: str, tmp_path, tok, *, sam: bool = True, lora: bool = True, **kw):
    """A trainer of ``kind`` built as TRL's docs build it: every argument by keyword."""
    kw = _common(tmp_path, **kw)
    if not sam:
        kw["optim"] = "adamw_torch"
    peft_config = {"peft_config": _lora("SEQ_CLS" if kind == "reward" else "CAUSAL_LM")} if lora else {}
    if kind == "sft":
        cls = SAMSFT if sam else trl.SFTTrainer
        return cls(model=tiny_lm(), args=trl.SFTConfig(**kw), processing_class=tok,
                   train_dataset=datasets.Dataset.from_dict({"text": TEXTS * 6}), **peft_config)
    if kind == "dpo":
        cls = SAMDPO if sam else trl.DPOTrainer
        pref = datasets.Dataset.from_dict({"prompt": ["a cat ", "the dog "] * 12, "chosen": ["sat.", "ran."] * 12,
                                           "rejected": ["ran!", "sat!"] * 12})
        ref = {"ref_model": None} if lora else {"ref_model": tiny_lm()}
        return cls(model=tiny_lm(), args=trl.DPOConfig(**kw), processing_class=tok, train_dataset=pref, **ref,
                   **peft_config)
    if kind == "grpo":
        cls = SAMGRPO if sam else trl.GRPOTrainer
        cfg = trl.GRPOConfig(**kw, num_generations=4, generation_batch_size=4, max_completion_length=8,
                             temperature=1.0)
        return cls(model=tiny_lm(), reward_funcs=a_count, args=cfg, processing_class=tok,
                   train_dataset=datasets.Dataset.from_dict({"prompt": ["a cat ", "the dog "] * 12}), **peft_config)
    if kind == "reward":
        cls = SAMReward if sam else trl.RewardTrainer
        pairs = datasets.Dataset.from_dict({"chosen": ["a cat sat.", "the dog ran."] * 12,
                                            "rejected": ["a cat ran!", "the dog sat!"] * 12})
        return cls(model=tiny_classifier(), args=trl.RewardConfig(**kw), processing_class=tok, train_dataset=pairs,
                   **peft_config)
    raise AssertionError(kind)


class _TrainingForwards:
    """Counts forwards with autograd on through the first LoRA-adapted layer (generation and reference passes
    run without gradients or with the adapters off)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        layer = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
        layer.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        if torch.is_grad_enabled():
            self.n += 1


def _adapters(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sft", "dpo", "grpo", "reward"])
def test_sam_trains_lora_and_resumes_exactly(kind, tmp_path, tok) -> None:
    log = []
    handler = logging.Handler()
    handler.emit = lambda record: log.append(record.getMessage())
    logging.getLogger("hf_adasam").addHandler(handler)
    try:
        full = build(kind, tmp_path / "full", tok, save_strategy="steps", save_steps=SAVE_AT)
        forwards = _TrainingForwards(full.model)
        full.train()
        resumed = build(kind, tmp_path / "resumed", tok)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{SAVE_AT}"))
    finally:
        logging.getLogger("hf_adasam").removeHandler(handler)

    assert forwards.n == 2 * STEPS  # SAM: pass 1 and pass 2 for every micro-step
    assert full.sam.stats.total_second_passes == STEPS
    losses = _losses(full)
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    if kind == "grpo":  # GRPO's loss is ~0 by construction: the policy moved towards the rewarded samples instead
        rewards = [h["reward"] for h in full.state.log_history if "reward" in h]
        assert any(r > 0 for r in rewards)
        assert any(not torch.equal(a, b) for a, b in zip(_adapters(full).values(), _adapters(build(
            kind, tmp_path / "fresh", tok)).values(), strict=True))
    else:
        assert sum(losses[-2:]) < sum(losses[:2])
    # the resumed run continues exactly: same losses after the checkpoint (its history before it comes from the
    # checkpoint), same final adapters, bit for bit
    assert resumed.state.log_history[SAVE_AT - 1]["step"] == SAVE_AT and _losses(resumed) == losses
    want, got = _adapters(full), _adapters(resumed)
    assert want.keys() == got.keys() and all(k.count("lora_") or kind == "reward" for k in want)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert any("SAM state restored" in line for line in log)


@pytest.mark.integration
def test_sft_metrics_count_the_first_pass_only(tmp_path, tok) -> None:
    sam = build("sft", tmp_path / "sam", tok, lora=False)
    plain = build("sft", tmp_path / "plain", tok, sam=False, lora=False)
    sam.train()
    plain.train()
    s = [h for h in sam.state.log_history if "loss" in h]
    p = [h for h in plain.state.log_history if "loss" in h]
    # the same batches: the same token count, which SAM's second pass must not double
    assert [h["num_tokens"] for h in s] == [h["num_tokens"] for h in p]
    assert s[-1]["num_tokens"] == 6 * sum(len(t) + 1 for t in TEXTS)  # 24 rows, once each: one token a character + EOS
    # step 1 runs both trainers on the same initial weights: pass 1's metrics are the plain run's
    assert s[0]["entropy"] == pytest.approx(p[0]["entropy"], rel=1e-6)
    assert s[0]["mean_token_accuracy"] == pytest.approx(p[0]["mean_token_accuracy"], rel=1e-6)
    assert s[0]["loss"] == pytest.approx(p[0]["loss"], rel=1e-6)


@pytest.mark.integration
def test_dpo_with_a_ref_model_by_keyword_reports_pass_one_rewards(tmp_path, tok) -> None:
    sam = build("dpo", tmp_path / "sam", tok, lora=False, max_steps=2)
    plain = build("dpo", tmp_path / "plain", tok, sam=False, lora=False, max_steps=2)
    sam.train()
    plain.train()
    assert sam.sam.stats.total_second_passes == 2
    s, p = sam.state.log_history[0], plain.state.log_history[0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "logits/chosen", "entropy", "num_tokens"):
        assert s[key] == pytest.approx(p[key], rel=1e-6, abs=1e-9), key
    assert sam.state.log_history[1]["num_tokens"] == plain.state.log_history[1]["num_tokens"]


@pytest.mark.integration
def test_grpo_pass_two_trains_on_pass_ones_completions(tmp_path, tok) -> None:
    """Pass 2 reuses pass 1's prepared batch: generation runs once per micro-step and the step counter, the token
    count and the reward log are the plain run's."""
    sam = build("grpo", tmp_path / "sam", tok, lora=False, max_steps=3)
    calls = []
    generate = sam._generate_and_score_completions
    sam._generate_and_score_completions = lambda *a, **k: calls.append(1) or generate(*a, **k)
    sam.train()
    plain = build("grpo", tmp_path / "plain", tok, sam=False, lora=False, max_steps=3)
    plain.train()
    assert len(calls) == 3 and sam.sam.stats.total_second_passes == 3
    assert sam._step == plain._step == 3
    s, p = sam.state.log_history[0], plain.state.log_history[0]
    for key in ("num_tokens", "reward", "completions/mean_length", "entropy"):
        assert s[key] == pytest.approx(p[key], rel=1e-6), key
