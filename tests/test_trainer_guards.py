"""No silent SAM-off, no ignored optim_args key, and the log lines a run owes its user.

- An optimizer that needs SAM (the registry's ``adasam``), by name or as an instance, under a Trainer that will not
  run the second pass, is refused when the Trainer is built, or at the latest before the first forward.
- Under the SAM trainers every ``optim_args`` key is SAM's or the optimizer's, Transformers' optimizers included.
- The compile line is printed by rank 0 only; a resumed run says that the SAM state was restored.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from transformers import Trainer, TrainingArguments

import hf_adasam
from hf_adasam import SAMTrainer, SAMTrainerMixin, SAMTrainingArguments
from hf_adasam.transformers_integration import registration

from ._tiny import TokenDataset, tiny_bert

REFUSAL = r"SAMTrainer.*SAMTrainerMixin first.*python -m hf_adasam"


def _args(tmp_path, cls=TrainingArguments, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    base.update(kw)
    return cls(**base)


class _Forwards:
    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.n += 1


# -- no silent SAM-off ---------------------------------------------------------------------------------------
def test_an_adasam_instance_in_a_plain_trainer_is_refused_when_it_is_built(tmp_path) -> None:
    model = tiny_bert()
    opt = hf_adasam.AdaSAM(model.parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match=r"instance AdaSAM.*" + REFUSAL):
        Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(), optimizers=(opt, None))
    # rho=0, said explicitly, asks for AdaSAM's base update alone: plain Trainer runs it
    Trainer(model=model, args=_args(tmp_path, optim_args="rho=0"), train_dataset=TokenDataset(),
            optimizers=(opt, None)).train()
    # an optimizer that does not need SAM passes
    Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(),
            optimizers=(hf_adasam.RAdam(model.parameters(), lr=1e-3), None)).train()


def test_an_adasam_class_through_optimizer_cls_and_kwargs_is_refused_before_the_first_forward(tmp_path) -> None:
    model = tiny_bert()
    forwards = _Forwards(model)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(),
                      optimizer_cls_and_kwargs=(hf_adasam.AdaSAM, {"lr": 1e-3}))
    with pytest.raises(RuntimeError, match=REFUSAL):
        trainer.train()
    assert forwards.n == 0


def test_by_name_without_the_guard_the_handler_refuses_before_the_first_forward(tmp_path, monkeypatch) -> None:
    """The guard sits among Transformers' default callbacks; where it is missing, building the optimizer refuses."""
    from transformers import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "DEFAULT_CALLBACKS",
                        [c for c in trainer_module.DEFAULT_CALLBACKS if c is not registration.SAMGuard])
    model = tiny_bert()
    forwards = _Forwards(model)
    trainer = Trainer(model=model, args=_args(tmp_path, optim="adamw_torch", optim_args="rho=0.05"),
                      train_dataset=TokenDataset())
    with pytest.raises(RuntimeError, match=REFUSAL):
        trainer.train()
    assert forwards.n == 0


def test_an_adasam_instance_built_after_transformers_trainer_guards_plain_trainers_without_other_imports() -> None:
    """A script that imports only ``hf_adasam.AdaSAM`` (never the integration) is guarded too: building the
    optimizer once Transformers' Trainer is loaded installs the guard."""
    code = (
        "import torch, transformers.trainer\n"
        "from transformers import Trainer, TrainingArguments, BertConfig, BertForSequenceClassification\n"
        "from hf_adasam import AdaSAM\n"
        "m = BertForSequenceClassification(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,"
        " num_attention_heads=1, intermediate_size=8))\n"
        "try:\n"
        "    Trainer(model=m, args=TrainingArguments(output_dir='o', use_cpu=True, report_to=[]),"
        " optimizers=(AdaSAM(m.parameters()), None))\n"
        "except RuntimeError as e:\n"
        "    print('REFUSED', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd="/tmp")
    assert "REFUSED The optimizer instance AdaSAM" in out.stdout, out.stderr[-2000:]
    assert "SAMTrainerMixin" in out.stdout and "python -m hf_adasam" in out.stdout


def test_an_adasam_instance_under_a_sam_trainer_with_rho_off_is_refused_when_built(tmp_path) -> None:
    model = tiny_bert()
    opt = hf_adasam.AdaSAM(model.parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match=r"AdaSAM needs SAM's second pass.*rho resolves to 0.*rho=0.05"):
        SAMTrainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(), optimizers=(opt, None))
    # with ρ on, the instance is the base optimizer of a SAM step
    trainer = SAMTrainer(model=model, args=_args(tmp_path, optim_args="rho=0.05"), train_dataset=TokenDataset(),
                         optimizers=(opt, None))
    trainer.train()
    assert trainer.sam.stats.total_second_passes == 2


def test_the_mixin_after_the_trainer_in_the_bases_is_refused_where_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"SAMTrainerMixin must come first in the bases, before Trainer"):
        type("Late", (Trainer, SAMTrainerMixin), {})


def test_the_mixin_finds_args_by_keyword_whatever_the_next_classs_signature(tmp_path) -> None:
    class RefFirst(Trainer):
        def __init__(self, model=None, ref=None, args=None, **kwargs):
            self.ref = ref
            super().__init__(model=model, args=args, **kwargs)

    class SAMRefFirst(SAMTrainerMixin, RefFirst):
        pass

    args = _args(tmp_path, cls=SAMTrainingArguments, optim="adasam", optim_args="rho=0.1")
    trainer = SAMRefFirst(model=tiny_bert(), args=args, ref=None, train_dataset=TokenDataset())
    assert trainer.args is args and trainer.ref is None and trainer.sam_config.rho == 0.1
    positional = SAMRefFirst(tiny_bert(), "the ref", args, train_dataset=TokenDataset())
    assert positional.args is args and positional.ref == "the ref"


# -- unknown optim_args keys ----------------------------------------------------------------------------------
@pytest.mark.parametrize("optim_args", ["rhoo=0.1", "rho=0.05,rhoo=0.1"])
def test_a_typo_in_optim_args_of_a_transformers_optimizer_is_an_error_naming_it(optim_args, tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="adamw_torch", optim_args=optim_args),
                   train_dataset=TokenDataset())
    msg = str(err.value)
    assert "\n" not in msg and "'rhoo'" in msg and "optim='adamw_torch'" in msg
    assert "rho, adaptive, eta" in msg  # the SAM keys
    assert "torch.optim.adamw.AdamW" in msg  # adamw_torch reads no key: the message says so


def test_a_typo_in_sgd_optim_args_lists_the_keys_transformers_reads(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'momentun'.*sgd's keys: dampening, momentum, nesterov, weight_decay"):
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="sgd", optim_args="rho=0.05,momentun=0.9"),
                   train_dataset=TokenDataset())
    trainer = SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="sgd", optim_args="rho=0.05,momentum=0.9"),
                         train_dataset=TokenDataset())
    trainer.train()
    assert trainer.optimizer.optimizer.defaults["momentum"] == 0.9


def test_a_typo_next_to_a_sam_key_with_an_hf_adasam_name_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown key 'rhoo' for optim='adasam'.*SAM keys rho"):
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, optim="adasam", optim_args="rho=0.05,rhoo=0.1"),
                   train_dataset=TokenDataset())


# -- log lines ------------------------------------------------------------------------------------------------
@pytest.fixture
def hf_adasam_log():
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("hf_adasam").addHandler(handler)
    yield lines
    logging.getLogger("hf_adasam").removeHandler(handler)


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_the_compile_line_is_printed_by_rank_zero_only(rank, printed, monkeypatch, hf_adasam_log) -> None:
    from hf_adasam.optim import _base

    def _single_tensor_probe():
        pass

    monkeypatch.setenv("RANK", rank)
    _base._announce_compile(_single_tensor_probe, [torch.zeros(2)])
    assert any("compiling the probe kernel" in line for line in hf_adasam_log) is printed
    assert _single_tensor_probe in _base._ANNOUNCED  # every rank remembers it was announced


def test_a_resumed_run_says_that_the_sam_state_was_restored(tmp_path, hf_adasam_log) -> None:
    args = dict(cls=SAMTrainingArguments, optim="adasam", max_steps=2, save_strategy="steps", save_steps=1)
    SAMTrainer(model=tiny_bert(), args=_args(tmp_path, **args), train_dataset=TokenDataset()).train()
    assert not any("restored" in line for line in hf_adasam_log)
    SAMTrainer(model=tiny_bert(), args=_args(tmp_path, **args), train_dataset=TokenDataset()).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert any(line.startswith("hf-adasam: SAM state restored from ") and "checkpoint-1" in line
               and "1 second passes in 1 micro-batches" in line for line in hf_adasam_log)
