"""SAMConfig: one place for the SAM knobs' defaults, checks and help, and what derives from it (SAM's
keywords, SAMTrainingArguments' fields, optim_args keys, the start-up line); ASAM's weights-only scope
against a hand computation."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
import warnings

import pytest
import torch

import hf_adasam
from hf_adasam import SAMConfig
from hf_adasam.sharpness.config import split_sam_keys
from hf_adasam.transformers_integration.arguments import SAMArgumentsMixin, without_sam_keys

from . import _sam_declarations as decl
from ._tiny import TokenDataset, tiny_bert

F64 = torch.float64

# Two tensors, by hand (float64, no code under test): ρ = 0.5, η = 0.01, w = (1, −2) named "lin.weight" and
# (0.5,) named "lin.bias", a linear loss so g = (0.3, 0.4) and (1.0,) everywhere.
#   weights only: T = (1.01, 2.01) and 1 → Tg = (0.303, 0.804, 1.0), ‖Tg‖ = √1.738225 = 1.3184176121396436,
#                 e = ρ·T²g/‖Tg‖ = 0.5·(0.30603, 1.61604, 1.0)/1.3184176121396436
#   every tensor: T_bias = 0.51 → ‖Tg‖ = √0.998325 = 0.9991621490028533, e_bias = 0.5·0.2601/‖Tg‖
HAND = {
    "weights": ([0.11605958430087851, 0.612871060397973], [0.379242506619869]),
    "all": ([0.15314331127590572, 0.8086975680629829], [0.13015905389296173]),
}


class _Lin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
        self.bias = torch.nn.Parameter(torch.tensor([0.5], dtype=F64))


def _perturbation_seen_by_pass_2(scope: str, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    model = _Lin()
    w0 = [p.detach().clone() for p in (model.weight, model.bias)]
    seen = []

    def closure():
        seen.append([p.detach().clone() for p in (model.weight, model.bias)])
        loss = (torch.tensor([0.3, 0.4], dtype=F64) * model.weight).sum() + model.bias.sum()
        loss.backward()
        return loss

    opt = hf_adasam.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5, adaptive=True, eta=0.01,
                        asam_scope=scope, named_parameters=model.named_parameters(), **extra)
    opt.zero_grad()
    opt.step(closure)
    assert len(seen) == 2
    return seen[1][0] - w0[0], seen[1][1] - w0[1]


@pytest.mark.parametrize("scope", ["weights", "all"])
def test_asam_scope_matches_the_hand_computation(scope: str) -> None:
    e_w, e_b = _perturbation_seen_by_pass_2(scope)
    want_w, want_b = HAND[scope]
    torch.testing.assert_close(e_w, torch.tensor(want_w, dtype=F64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(e_b, torch.tensor(want_b, dtype=F64), rtol=1e-12, atol=1e-15)


def test_asam_scope_defaults_to_every_tensor_as_the_paper() -> None:
    assert SAMConfig().asam_scope == "all"
    model = _Lin()
    seen = []

    def closure():
        seen.append(model.bias.detach().clone())
        ((torch.tensor([0.3, 0.4], dtype=F64) * model.weight).sum() + model.bias.sum()).backward()

    opt = hf_adasam.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5, adaptive=True)  # no names needed
    opt.step(closure)
    torch.testing.assert_close(seen[1] - seen[0], torch.tensor(HAND["all"][1], dtype=F64), rtol=1e-12, atol=1e-15)


def test_weights_scope_without_names_fails_at_construction_saying_what_to_pass() -> None:
    with pytest.raises(ValueError, match=r"named_parameters=model\.named_parameters\(\).*asam_scope='all'"):
        hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), adaptive=True, asam_scope="weights")


def test_asam_scope_reaches_trainer_from_arguments_and_optim_args(tmp_path) -> None:
    base = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, use_cpu=True, report_to=[],
                save_strategy="no", disable_tqdm=True)
    for args in (hf_adasam.SAMTrainingArguments(optim="adasam", sam_adaptive=True, sam_asam_scope="weights", **base),
                 hf_adasam.SAMTrainingArguments(optim="adasam", optim_args="adaptive=true,asam_scope=weights", **base)):
        trainer = hf_adasam.SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
        trainer.train()
        pert = trainer.sam.perturbation
        assert pert.asam_scope == "weights" and pert.rho == 0.5
        names = dict(trainer.model.named_parameters())
        scaled = dict(zip([n for n, p in names.items() if p.requires_grad], pert.scaled(trainer._sam_params),
                          strict=True))
        assert scaled["bert.encoder.layer.0.attention.self.query.weight"] is True
        assert scaled["bert.encoder.layer.0.attention.self.query.bias"] is False
        assert scaled["bert.embeddings.LayerNorm.bias"] is False


@pytest.mark.parametrize(
    ("kw", "line"),
    [({"asam_scope": "biases"}, "asam_scope='biases' is invalid: allowed 'all' or 'weights'; default all"),
     ({"policy": "fast"}, "policy='fast' is invalid: allowed always, ae, looksam, ae_looksam; default always"),
     ({"ae_delta": 1.0}, "ae_delta='1.0' is invalid: allowed a number in [0, 1); default 0.9"),
     ({"looksam_k": 0}, "looksam_k='0' is invalid: allowed an integer >= 1; default 5")],
)
def test_a_bad_knob_is_one_line_with_value_allowed_and_default(kw, line) -> None:
    with pytest.raises(ValueError) as err:
        hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), **kw)
    assert str(err.value) == "SAM: " + line


def test_unknown_knob_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown SAM knob 'radius'; known: rho, adaptive, eta, asam_scope, policy"):
        hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), radius=0.1)


@pytest.mark.parametrize(("optim", "default"), [("adasam", "default 0.05 (ASAM 0.5) for optim=adasam"),
                                                ("adamw_torch", "default 0 (SAM off) for optim=adamw_torch")])
def test_rho_abc_names_the_real_default_for_this_optim(optim, default, tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim=optim, optim_args="rho=abc")
    assert str(err.value) == f"optim_args: rho='abc' is invalid: allowed a number >= 0; {default}"


def test_knobs_without_effect_warn(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"policy=ae have no effect: rho resolves to 0, so SAM is off"):
        hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", optim_args="policy=ae")
    with pytest.warns(UserWarning, match=r"looksam_k=3 has no effect: it is used only with policy=looksam"):
        hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim="adasam", sam_policy="ae", sam_looksam_k=3)
    with pytest.warns(UserWarning, match=r"eta=0.1 has no effect: it is used only with adaptive=true"):
        hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), eta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about a consistent set-up
        hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim="adasam", sam_policy="ae", sam_ae_delta=0.8)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _startup_lines(tmp_path, **kw) -> list[str]:
    args = hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                                          use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, **kw)
    trainer = hf_adasam.SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
    logger, lines = logging.getLogger("hf_adasam"), _Lines()
    logger.addHandler(lines)
    level, logger.level = logger.level, logging.INFO
    try:
        trainer.train()
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return lines.lines


def test_one_startup_line_with_the_resolved_settings(tmp_path) -> None:
    assert _startup_lines(tmp_path, optim="adasam", sam_policy="looksam") == [
        "hf-adasam: SAM on: rho=0.05, adaptive=false, policy=looksam, looksam_k=5, looksam_alpha=0.7, "
        "sync_perturbation=false, exact_accumulation=false"]
    assert _startup_lines(tmp_path, optim="adamw_torch") == ["hf-adasam: SAM off (rho=0): plain optimizer steps"]


def test_everything_derives_from_the_config() -> None:
    knobs = [f.name for f in dataclasses.fields(SAMConfig)]
    assert knobs == ["rho", "adaptive", "eta", "asam_scope", "policy", "ae_delta", "ae_lambdas", "looksam_k",
                     "looksam_alpha", "sync_perturbation", "exact_accumulation"]
    fields = {f.name: f for f in dataclasses.fields(hf_adasam.SAMTrainingArguments)}
    for f in dataclasses.fields(SAMConfig):
        assert fields[f"sam_{f.name}"].default is None
        assert f.metadata["help"] in fields[f"sam_{f.name}"].metadata["help"]
        assert f"{f.name} (default {SAMConfig.default_text(f.name)})" in fields["optim_args"].metadata["help"]
    sam_kw = [n for n, p in inspect.signature(hf_adasam.SAM).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert sam_kw == ["total_steps", "no_sync", "named_parameters", *knobs[:-1]]  # exact_accumulation: Trainer only
    assert SAMConfig.resolve({}, sam_asked=True).rho == 0.05 and SAMConfig.resolve({"adaptive": True},
                                                                                   sam_asked=True).rho == 0.5
    assert SAMConfig.resolve({}, sam_asked=False).rho == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMConfig().rho = 1.0  # type: ignore[misc]


def test_the_declared_knobs_say_what_samconfig_says() -> None:
    """SAM(...)'s knob keywords and SAMTrainingArguments' sam_* fields are written out in the source (IDEs and type
    checkers see them); a knob added to SAMConfig, or a name, type, default or help changed there, fails here."""
    hint = f"the declarations differ from SAMConfig: run `{decl.GENERATOR}`"
    params = list(inspect.signature(hf_adasam.SAM.__init__).parameters.values())
    knobs = [p for p in params if p.kind is p.KEYWORD_ONLY][3:]  # after total_steps, no_sync, named_parameters
    assert [p.name for p in knobs] == [f.name for f in SAMConfig.knobs(trainer=False)], hint
    for p, f in zip(knobs, SAMConfig.knobs(trainer=False), strict=True):
        assert p.annotation == f.type, (p.name, hint)
        assert p.default == f.default and type(p.default) is type(f.default), (p.name, hint)
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD  # any other keyword: the one-line "unknown SAM knob"

    annotations = inspect.get_annotations(SAMArgumentsMixin)
    assert [n for n in annotations if n.startswith("sam_")] == [f"sam_{f.name}" for f in SAMConfig.knobs()], hint
    fields = {f.name: f for f in dataclasses.fields(hf_adasam.SAMTrainingArguments)}
    for f in SAMConfig.knobs():
        field = fields[f"sam_{f.name}"]
        assert annotations[field.name] == decl.argument_type(f), (field.name, hint)
        assert field.default is None, (field.name, hint)
        assert field.metadata["help"] == decl.argument_help(f) + "%(default).0s", (field.name, hint)
        flag = ("?", True) if decl.is_flag(f) else (None, None)
        assert (field.metadata.get("nargs"), field.metadata.get("const")) == flag, (field.name, hint)
    assert typing.get_type_hints(SAMArgumentsMixin)["sam_ae_lambdas"] == list[float] | None  # what the parser reads
    # and running the generator would change nothing
    assert decl.current(decl.SAM) == decl.sam_keywords(), hint
    assert decl.current(decl.ARGUMENTS) == decl.argument_fields(), hint


def test_a_keyword_at_its_default_is_not_a_setting_but_a_wrong_type_is_checked() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eta at its default without adaptive: nothing to warn about
        assert hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), eta=0.01).config.eta == 0.01
    with pytest.raises(ValueError) as err:
        hf_adasam.SAM(torch.optim.SGD(_Lin().parameters(), lr=0.1), adaptive=0)  # 0 == False, but not a bool
    assert str(err.value) == "SAM: adaptive='0' is invalid: allowed true or false; default false"


def test_optim_args_split_into_sam_keys_and_the_optimizers() -> None:
    sam, rest = split_sam_keys("betas=0.9:0.99, rho=0.1,policy=ae ,eps=1e-8")
    assert (sam, rest) == ({"rho": "0.1", "policy": "ae"}, {"betas": "0.9:0.99", "eps": "1e-8"})
    assert split_sam_keys({"looksam_k": 3, "n": 10}) == ({"looksam_k": 3}, {"n": 10})
    assert split_sam_keys(None) == ({}, {})
    assert without_sam_keys("rho=0.1,betas=0.9:0.99") == "betas=0.9:0.99" and without_sam_keys("rho=0") is None
