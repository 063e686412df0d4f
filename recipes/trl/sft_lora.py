"""LoRA SFT of a small causal LM with SAM, through TRL's ``SFTTrainer`` and ``SAMTrainerMixin``.

The model is built offline from a config: a Llama-style decoder (``--hidden_size``, ``--num_layers``), randomly
initialised and frozen, with LoRA adapters on every linear layer: no pretrained causal LM is reachable here, so
this is a smoke-scale run of the whole path (data, tokenizer, LoRA, SAM, TRL, checkpoint, card), not a quality
result. The text is real: the English captions of Multi30k (JSON lines ``{"translation": {"en": ...}}``, read in
place). The tokenizer is character-level, built from the training text (one token per character seen, plus
``<pad>``, ``<eos>``, ``<unk>``), so the vocabulary and the LM head stay small enough for a CPU; it is saved with
the adapters. ``--tokenizer_name`` uses a real subword tokenizer instead (e.g.
``../shared/data/models/t5-small-tokenizer``: its 32k-entry LM head makes each step some 30× slower here).

    python recipes/trl/sft_lora.py recipes/trl/configs/multi30k_en_sft_lora_adasam.json

Flags: every ``SFTConfig`` flag (``--optim``, ``--optim_args``, ``--max_steps``, ...), every ``--sam_*`` knob, and
the script's own below; a leading ``config.json`` supplies flags and later flags override it. Prints the validation
loss (and perplexity) before and after training; writes the adapters, metrics and a model card to
``--output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import CardInfo, RecipeError, clean_on_failure, parse_args, run_main, train_and_save, write_model_card
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, HfArgumentParser, LlamaConfig, LlamaForCausalLM, set_seed
from trl import SFTConfig, SFTTrainer

from hf_adasam import SAMTrainerMixin
from hf_adasam.transformers_integration.arguments import SAMArgumentsMixin


@dataclasses.dataclass
class SAMSFTConfig(SAMArgumentsMixin, SFTConfig):
    """SFTConfig plus the --sam_* knobs (checked and resolved when the flags are parsed)."""


class SAMSFTTrainer(SAMTrainerMixin, SFTTrainer):
    """SFTTrainer with the sharpness-aware step."""


@dataclass
class ScriptArguments:
    train_file: str = field(metadata={"help": "JSON lines; each line's text is ['translation'][--language]."})
    validation_file: str = field(metadata={"help": "JSON lines, same format."})
    language: str = field(default="en", metadata={"help": "Which side of each translation pair is the text."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "A tokenizer directory or id; default: character-level, built from the training text."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training lines."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation lines."})
    hidden_size: int = field(default=128, metadata={"help": "The random-init model's width."})
    num_layers: int = field(default=2, metadata={"help": "The random-init model's depth."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    train_embeddings: bool = field(default=True, metadata={
        "help": "Also train the token embeddings and the LM head in full (PEFT's modules_to_save), as one does for a "
                "new vocabulary: here the character vocabulary is new to the model."})


def read_texts(path: str, language: str, limit: int | None) -> list[str]:
    if not Path(path).is_file():
        raise RecipeError(f"data file {path} not found")
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                texts.append(json.loads(line)["translation"][language])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RecipeError(f"{path}:{n}: expected {{\"translation\": {{\"{language}\": ...}}}}") from None
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise RecipeError(f"{path}: no lines")
    return texts


def char_tokenizer(texts: list[str]) -> Any:
    """One token per character of ``texts``, plus <pad> (0), <eos> (1) and <unk> (2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set("".join(texts)) - set(specials)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ScriptArguments, SAMSFTConfig))
    script, args = parse_args(parser, argv)
    train = read_texts(script.train_file, script.language, script.max_train_samples)
    valid = read_texts(script.validation_file, script.language, script.max_eval_samples)
    tokenizer = AutoTokenizer.from_pretrained(script.tokenizer_name) if script.tokenizer_name else char_tokenizer(train)
    tokens = script.tokenizer_name or f"character-level ({len(tokenizer)} tokens, from the training text)"

    with clean_on_failure(args.output_dir):
        set_seed(args.seed)
        # a decoder-only model of this shape, random init (no pretrained causal LM is reachable offline)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=script.hidden_size,
                             intermediate_size=4 * script.hidden_size, num_hidden_layers=script.num_layers,
                             num_attention_heads=max(1, script.hidden_size // 32), max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
        lora = LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, target_modules="all-linear",
                          lora_dropout=0.0, task_type="CAUSAL_LM",
                          modules_to_save=["embed_tokens", "lm_head"] if script.train_embeddings else None)
        trainer = SAMSFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                                train_dataset=Dataset.from_dict({"text": train}),
                                eval_dataset=Dataset.from_dict({"text": valid}))
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        print(f"model: random-init {script.num_layers}-layer Llama, hidden {script.hidden_size}, {total:,} "
              f"parameters, {trainable:,} trainable (LoRA r={script.lora_r} on every linear layer"
              f"{', embeddings and LM head in full' if script.train_embeddings else ''}); tokenizer: "
              f"{tokens}")
        before = trainer.evaluate(metric_key_prefix="before")["before_loss"]
        runtime = train_and_save(trainer)
        metrics = trainer.evaluate()
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
        metrics["eval_loss_before_training"] = before
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        print(f"validation: loss {metrics['eval_loss']:.3f} (perplexity {metrics['eval_perplexity']:.1f}); before "
              f"training {before:.3f} (perplexity {math.exp(before):.1f})")
        if args.should_save and args.do_train:
            write_model_card(args.output_dir, CardInfo(
                model_name=Path(args.output_dir).name,
                base_model=f"random init: {script.num_layers}-layer Llama, hidden {script.hidden_size}, "
                f"tokenizer {tokens}",
                task_type="text-generation", task_name=f"Multi30k captions ({script.language}), language modelling",
                dataset_id="multi30k", dataset_config=script.language, dataset_split="validation",
                data_source=f"{script.train_file} / {script.validation_file} ({len(train)} training captions)",
                metrics={"loss": metrics["eval_loss"], "perplexity": metrics["eval_perplexity"]},
                train_runtime_s=runtime,
                command="python recipes/trl/sft_lora.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            ), trainer)
    return metrics


if __name__ == "__main__":
    run_main(main)
