"""The optim-name registry and its hook into TrainingArguments / Trainer."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

import hf_adasam
from hf_adasam import OPTIMIZERS, create_optimizer
from hf_adasam.registry import optimizer_kwargs, parse_optim_args

from ._tiny import TokenDataset, dataset_loss, tiny_bert

hf_adasam.register()  # `import hf_adasam` alone leaves Transformers untouched

# Learning rates on each optimizer's own scale (Adai and SGD want SGD-sized steps; AdaShift only stores
# gradients for its first n=10 steps and RAdam's first 5 are un-adapted momentum steps, so 20 steps need more).
LR = {"adai": 0.5, "adaiw": 0.5, "cprop_sgd": 0.5, "adashift": 2e-2, "radam": 3e-2}
EXPECTED = {
    "adasam": hf_adasam.AdaSAM,
    "set_adam": hf_adasam.SETAdam,
    "radam": hf_adasam.RAdam,
    "adai": hf_adasam.Adai,
    "adaiw": hf_adasam.Adai,
    "adashift": hf_adasam.AdaShift,
    "cprop_adam": hf_adasam.CPropAdam,
    "cprop_sgd": hf_adasam.CPropSGD,
    "generic_adam": hf_adasam.GenericAdam,
}


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=20, logging_steps=5,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def test_registry_names_are_the_documented_set() -> None:
    assert set(OPTIMIZERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trainer_trains_tiny_bert_with_each_registered_name(name: str, tmp_path) -> None:
    model, ds = tiny_bert(), TokenDataset()
    before = dataset_loss(model, ds)
    args = _args(tmp_path, optim=name, learning_rate=LR.get(name, 2e-3), weight_decay=0.01)
    # a name that asks for SAM (adasam) needs the Trainer that runs the second pass; plain Trainer refuses it
    trainer_cls = hf_adasam.SAMTrainer if OPTIMIZERS[name].sam else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=ds)
    trainer.train()
    opt = trainer.optimizer.optimizer  # AcceleratedOptimizer wraps the real one
    assert type(opt) is EXPECTED[name]
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0
    after = dataset_loss(model, ds)
    assert after < before - 0.05, f"{name}: loss {before:.4f} -> {after:.4f}"


def test_adaiw_is_decoupled_and_radam_uses_decoupled_weight_decay(tmp_path) -> None:
    assert optimizer_kwargs("adaiw", _args(tmp_path, optim="adaiw"))["decoupled"] is True
    assert optimizer_kwargs("radam", _args(tmp_path, optim="radam"))["decoupled_weight_decay"] is True


def test_unknown_optim_name_lists_every_known_name() -> None:
    with pytest.raises(ValueError) as err:
        TrainingArguments(output_dir="unused", optim="nope")
    for name in [*OPTIMIZERS, "adamw_torch", "adafactor"]:
        assert f"'{name}'" in str(err.value)
    with pytest.raises(ValueError, match="adasam, set_adam"):
        create_optimizer("nope", [torch.zeros(1, requires_grad=True)])


def test_transformers_own_names_keep_working(tmp_path) -> None:
    args = _args(tmp_path, optim="adamw_torch", max_steps=2)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
    trainer.train()
    assert type(trainer.optimizer.optimizer) is torch.optim.AdamW


def test_optim_args_are_typed_by_the_knob_default() -> None:
    kw = parse_optim_args("adashift", "n=3, phi=mean,betas=0.8:0.99 ,eps=1e-9")
    assert kw == {"n": 3, "phi": "mean", "betas": (0.8, 0.99), "eps": 1e-9}
    assert parse_optim_args("adasam", "bias_correction=true") == {"bias_correction": True}


BAD_OPTIM_ARGS = [("nope=1", "valid keys: .*betas.*bias_correction.*eps"), ("eps=abc", "eps='abc'.*default eps=1e-08"),
                  ("betas=0.9", "betas"), ("bias_correction=maybe", "bias_correction"), ("eps", "key=value")]


@pytest.mark.parametrize(("optim_args", "match"), BAD_OPTIM_ARGS[:-1])
def test_bad_optim_args_say_what_is_valid(optim_args: str, match: str, tmp_path) -> None:
    # plain Trainer: checked when the optimizer is built ("eps" without "=" is Transformers' own parser's error
    # there: hf-adasam no longer replaces that private function)
    args = _args(tmp_path, optim="adasam", optim_args=optim_args)
    with pytest.raises(ValueError, match=match):
        Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset()).create_optimizer()


@pytest.mark.parametrize(("optim_args", "match"), BAD_OPTIM_ARGS)
def test_bad_optim_args_fail_when_sam_training_arguments_are_built(optim_args: str, match: str, tmp_path) -> None:
    with pytest.raises(ValueError, match=match):
        hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim="adasam", optim_args=optim_args)


def test_optim_args_values_reach_the_constructor_and_are_validated(tmp_path) -> None:
    trainer = Trainer(model=tiny_bert(), args=_args(tmp_path, optim="adashift", optim_args="n=3,phi=none"),
                      train_dataset=TokenDataset())
    opt = trainer.create_optimizer()
    assert opt.defaults["n"] == 3 and opt.defaults["phi"] == "none"
    trainer = Trainer(model=tiny_bert(), args=_args(tmp_path, optim="adashift", optim_args="n=0"),
                      train_dataset=TokenDataset())
    with pytest.raises(ValueError, match="n"):
        trainer.create_optimizer()


def test_adam_arguments_reach_the_optimizer_only_when_set(tmp_path) -> None:
    # defaults of TrainingArguments leave the paper's defaults in place ...
    kw = optimizer_kwargs("adashift", _args(tmp_path, optim="adashift", learning_rate=3e-4, weight_decay=0.1))
    assert kw == {"lr": 3e-4, "weight_decay": 0.1}
    # ... and a user's explicit setting reaches the knob of the same meaning
    kw = optimizer_kwargs("set_adam", _args(tmp_path, optim="set_adam", adam_beta2=0.98, adam_epsilon=1e-6))
    assert kw["betas"] == (0.9, 0.98) and "eps" not in kw  # SET-Adam's eps is an embedding, not Adam's
    kw = optimizer_kwargs("adasam", _args(tmp_path, optim="adasam", adam_epsilon=1e-6, optim_args="eps=1e-7"))
    assert kw["eps"] == 1e-7  # optim_args wins


def test_hf_argument_parser_accepts_registered_names(tmp_path) -> None:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optim", "generic_adam", "--optim_args", "lr_power=0.5"]
    )
    assert args.optim == "generic_adam"
    assert optimizer_kwargs("generic_adam", args)["lr_power"] == 0.5


def test_training_args_pickle_loads_without_hf_adasam(tmp_path) -> None:
    args = _args(tmp_path, optim="adasam")
    path = tmp_path / "training_args.bin"
    path.write_bytes(pickle.dumps(args))
    code = (
        "import pickle, sys; a = pickle.loads(open(sys.argv[1], 'rb').read());"
        "assert 'hf_adasam' not in sys.modules; print(type(a.optim).__name__, a.optim)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["str", "adasam"]
