"""Model cards as a user meets them: the configured learning rate, the warm-up in words, one description of the
optimizer, the tags and library of the card that was there (PEFT's adapter card), a card whenever the user saves
the model (also with ``save_strategy="no"``), the training time summed over resumed runs, TRL's cards too; and the
committed ``model_cards/`` equal to what the template renders from their recorded inputs."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

import hf_adasam
from hf_adasam.transformers_integration import card as card_module

from ._tiny import TokenDataset, tiny_bert

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _args(out: Path, **kw) -> hf_adasam.SAMTrainingArguments:
    base = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, use_cpu=True, report_to=[],
                save_strategy="no", disable_tqdm=True, learning_rate=1e-3)
    return hf_adasam.SAMTrainingArguments(**{**base, **kw})


def _card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def _seconds(text: str) -> tuple[int, str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("- Training time: "))
    return int(re.match(r"- Training time: (\d+) s", line).group(1)), line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SAM run of 4 steps with a linear schedule and warm-up 0.5, in a folder that already had a card."""
    from huggingface_hub import ModelCard, ModelCardData

    out = tmp_path_factory.mktemp("run")
    ModelCard.from_template(ModelCardData(library_name="my-library", tags=["my-tag"], license="mit")).save(
        out / "README.md")  # e.g. one the user wrote before, or PEFT's adapter card
    trainer = hf_adasam.SAMTrainer(model=tiny_bert(), args=_args(out, optim="adasam", warmup_steps=0.5),
                                   train_dataset=TokenDataset())
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    return trainer, _card(out)


def test_card_records_the_configured_learning_rate(trained) -> None:
    trainer, card = trained
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # where the linear schedule ended: not the run's lr
    meta = card.data.to_dict()["hf_adasam"]
    assert meta["optimizer_param_group"]["lr"] == 1e-3 == meta["learning_rate"]
    assert "- Optimizer: `optim=adasam` (`hf_adasam.optim.adasam.AdaSAM`), learning rate 0.001," in card.text


def test_card_says_the_warmup_in_words(trained) -> None:
    trainer, card = trained
    assert "schedule linear, warm-up 50% of the steps (2 of 4), weight decay 0.0" in card.text
    assert "fraction of them" not in card.text
    args = trainer.args
    for steps, total, text in ((0, 4, "no warm-up"), (100, None, "warm-up 100 steps"),
                               (0.1, 375, "warm-up 10% of the steps (38 of 375)")):
        assert card_module.warmup_text(dataclasses.replace(args, warmup_steps=steps), total) == text


def test_card_describes_the_optimizer_once(trained) -> None:
    _, card = trained
    # Transformers' "- optimizer: Use OptimizerNames.ADASAM and the args are: No additional ..." points at ours
    assert "OptimizerNames" not in card.text and "No additional optimizer arguments" not in card.text
    assert '- optimizer: see "Optimizer and sharpness-aware training (hf-adasam)" below' in card.text
    assert card.text.count("`optim=adasam`") == 1 and "Training procedure" in card.text  # Transformers' card kept


def test_card_keeps_the_tags_and_library_of_the_card_that_was_there(trained) -> None:
    meta = trained[1].data.to_dict()
    assert meta["library_name"] == "my-library" and meta["license"] == "mit"
    assert meta["tags"][0] == "my-tag" and {"generated_from_trainer", "hf-adasam", "adasam", "sharpness-aware"} <= set(
        meta["tags"])


def test_saving_the_model_writes_its_card_also_with_save_strategy_no(trained) -> None:
    trainer, _ = trained
    assert trainer.args.save_strategy == "no"
    out = Path(trainer.args.output_dir)
    (out / "README.md").unlink()
    trainer.save_model()
    assert (out / "model.safetensors").is_file()
    assert _card(out).data.to_dict()["hf_adasam"]["optimizer_param_group"]["lr"] == 1e-3
    trainer.save_model(str(out / "elsewhere"))  # Transformers' card goes to output_dir only: ours is there too
    other = _card(out / "elsewhere")
    assert (out / "elsewhere" / "model.safetensors").is_file() and "ρ = 0.05" in other.text
    assert other.data.to_dict()["hf_adasam"]["optim"] == "adasam"


class _Slow(__import__("transformers").TrainerCallback):
    """Each optimizer step takes at least ``SECONDS`` of wall time."""

    SECONDS = 1.0

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.SECONDS)


def test_resumed_run_card_gives_the_training_time_of_both_runs(tmp_path) -> None:
    walls = []
    for steps, resume in ((2, None), (4, str(tmp_path / "checkpoint-2"))):
        args = _args(tmp_path, optim="adamw_torch", max_steps=steps, save_strategy="steps", save_steps=2)
        trainer = hf_adasam.SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(),
                                       callbacks=[_Slow()])
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        walls.append(time.perf_counter() - t0)
    trainer.create_model_card(model_name="tiny")
    seconds, line = _seconds(_card(tmp_path).text)
    # four steps were trained, two in each run, each step sleeping 1 s: the card's time exceeds this (resumed) run's
    # own by the first run's, at least its 2 s of sleep (less 1 s: the card gives whole seconds), however loaded the
    # machine; a card of the resumed part alone would differ from it by under 1 s
    runtime = trainer.state.log_history[-1]["train_runtime"]
    assert seconds - runtime >= 2 * _Slow.SECONDS - 1 and seconds >= 4 * _Slow.SECONDS, (line, runtime)
    assert seconds <= sum(walls) + 1, (line, walls)
    assert "summed over 2 runs" in line


def test_trl_sft_lora_card_keeps_peft_tags_and_comes_with_save_model(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(SHARED / "models" / "t5-small-tokenizer")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))

    class SFT(hf_adasam.SAMTrainerMixin, SFTTrainer):
        pass

    cfg = SFTConfig(str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, optim="adasam",
                    report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, max_length=16, bf16=False)
    trainer = SFT(model, cfg, train_dataset=Dataset.from_dict({"text": [f"the cat sat on mat {i}" for i in range(8)]}),
                  processing_class=tok, peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    trainer.save_model()
    card = _card(tmp_path)
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft"  # PEFT's adapter card said so
    assert {"lora", "base_model:adapter:", "trl", "sft", "hf-adasam", "adasam"} <= set(meta["tags"])
    assert meta["hf_adasam"]["optimizer_param_group"]["lr"] == 1e-3
    assert "It has been trained using [TRL]" in card.text and "ρ = 0.05" in card.text


# ----------------------------------------------------------------------------------------------
# model_cards/: the reference runs' cards equal what the template renders from their recorded inputs
# ----------------------------------------------------------------------------------------------
CARDS = sorted((ROOT / "model_cards").glob("*/card_inputs.json"))


def test_model_cards_has_the_reference_runs() -> None:
    names = {p.parent.name for p in CARDS}
    assert {"sst2-minilm-adasam_ae", "multi30k-en-de-t5-small-random-adasam"} <= names, names


@pytest.mark.parametrize("inputs", CARDS, ids=[p.parent.name for p in CARDS])
def test_committed_model_card_is_what_the_template_renders_from_its_inputs(inputs, tmp_path) -> None:
    recorded = json.loads(inputs.read_text())
    committed = (inputs.parent / "README.md").read_text()
    assert card_module.render_card(recorded) == committed, "stale: python model_cards/regenerate.py --render"
    # and the inputs hold every setting today's runs record
    settings = card_module.training_settings(_untrained_trainer(recorded["settings"]["optim"], tmp_path))
    assert set(recorded["settings"]) == set(settings)
    assert set(recorded["settings"]["sam"]) - {"second_pass_fraction", "ae_total_steps"} == set(
        hf_adasam.SAMConfig.names())
    if recorded["info"] is not None:
        assert set(recorded["info"]) == {f.name for f in dataclasses.fields(card_module.CardInfo)}


def _untrained_trainer(optim: str, out: Path):
    args = hf_adasam.SAMTrainingArguments(output_dir=str(out), optim=optim, use_cpu=True, report_to=[])
    return hf_adasam.SAMTrainer(model=tiny_bert(), args=args)
