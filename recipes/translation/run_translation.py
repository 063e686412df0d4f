"""Fine-tune a seq2seq model for translation with the SAM-aware ``Seq2SeqTrainer``.

Flags follow Transformers' ``examples/pytorch/translation/run_translation.py`` (``--model_name_or_path``,
``--source_lang``, ``--target_lang``, ``--train_file``, ``--validation_file``, ``--source_prefix``,
``--predict_with_generate``, every ``Seq2SeqTrainingArguments`` flag) plus the ``--sam_*`` knobs.
A leading ``config.json`` supplies flags (``recipes/translation/configs/``).

    python recipes/translation/run_translation.py recipes/translation/configs/wmt16_en_ro_t5_small.json

Data: JSON lines with ``{"translation": {"en": ..., "ro": ...}}`` per line (``--train_file``,
``--validation_file``), or a Hub dataset (``--dataset_name wmt16 --dataset_config_name ro-en``).
``--config_name`` without ``--model_name_or_path`` trains a model of that shape from random init.
Evaluation generates and scores with sacrebleu (BLEU and chrF).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    CardInfo,
    RecipeError,
    clean_on_failure,
    parse_args,
    push_with_card,
    resolve_model,
    run_main,
    train_and_save,
    write_model_card,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint path or Hub id."})
    config_name: str | None = field(default=None, metadata={
        "help": "Config (path or id) for a randomly initialised model, when --model_name_or_path is not given."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})


@dataclass
class DataTrainingArguments:
    source_lang: str = field(metadata={"help": "Source language id, e.g. en."})
    target_lang: str = field(metadata={"help": "Target language id, e.g. ro."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. wmt16."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. ro-en."})
    train_file: str | None = field(default=None, metadata={
        "help": "JSON lines: {\"translation\": {src: .., tgt: ..}}."})
    validation_file: str | None = field(default=None, metadata={"help": "JSON lines, same format."})
    source_prefix: str = field(default="", metadata={"help": "Prepended to every source (T5: 'translate ...: ')."})
    max_source_length: int = field(default=128, metadata={"help": "Longer sources are truncated."})
    max_target_length: int = field(default=128, metadata={"help": "Longer targets are truncated."})
    val_max_target_length: int | None = field(default=None, metadata={"help": "Generation length at evaluation."})
    num_beams: int | None = field(default=None, metadata={"help": "Beams at evaluation (default: the model's)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation pairs."})


def read_jsonl(path: str, src: str, tgt: str) -> dict[str, list[str]]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"expected a JSON-lines file at {path} "
                          f"({{\"translation\": {{\"{src}\": ..., \"{tgt}\": ...}}}} per line); not found")
    sources, targets = [], []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                pair = json.loads(line)["translation"]
                sources.append(pair[src])
                targets.append(pair[tgt])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RecipeError(f"{path} line {i}: expected {{\"translation\": {{\"{src}\": ..., \"{tgt}\": ...}}}}; "
                                  f"got {line.strip()[:80]!r}") from None
    return {"source": sources, "target": targets}


def load_splits(data: DataTrainingArguments, model_args: ModelArguments, need_train: bool,
                need_eval: bool) -> dict[str, Any]:
    import datasets

    wanted = {"train": need_train, "validation": need_eval}
    files = {"train": data.train_file, "validation": data.validation_file}
    if data.dataset_name is None and any(wanted[s] and files[s] is None for s in wanted):
        raise RecipeError("give --train_file/--validation_file (JSON lines) or --dataset_name for each split asked for")
    splits = {}
    for split, need in wanted.items():
        if not need:
            continue
        if files[split] is not None:
            splits[split] = datasets.Dataset.from_dict(read_jsonl(files[split], data.source_lang, data.target_lang))
        else:
            hub = datasets.load_dataset(data.dataset_name, data.dataset_config_name, split=split,
                                        cache_dir=model_args.cache_dir)
            splits[split] = hub.map(lambda ex: {"source": [t[data.source_lang] for t in ex["translation"]],
                                                "target": [t[data.target_lang] for t in ex["translation"]]},
                                    batched=True, remove_columns=hub.column_names)
        limit = data.max_train_samples if split == "train" else data.max_eval_samples
        if limit is not None:
            splits[split] = splits[split].select(range(min(limit, len(splits[split]))))
    return splits


def make_compute_metrics(tokenizer: Any) -> Any:
    import sacrebleu

    def compute(pred: Any) -> dict[str, float]:
        preds = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        labels = np.where(pred.label_ids != -100, pred.label_ids, tokenizer.pad_token_id)
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        hyps = [s.strip() for s in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        refs = [s.strip() for s in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
                "gen_len": float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))}

    return compute


def main(argv: list[str] | None = None) -> dict[str, float]:
    from transformers import (
        AutoConfig,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        HfArgumentParser,
        set_seed,
    )

    from hf_adasam import SAMSeq2SeqTrainer, SAMSeq2SeqTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, SAMSeq2SeqTrainingArguments))
    model_args, data_args, training_args = parse_args(parser, argv)
    if not (training_args.do_train or training_args.do_eval):
        raise RecipeError("nothing to do: pass --do_train and/or --do_eval")
    if model_args.model_name_or_path is None and model_args.config_name is None:
        raise RecipeError("give --model_name_or_path (a checkpoint) or --config_name (random init of that shape)")
    if model_args.model_name_or_path is None and model_args.tokenizer_name is None:
        raise RecipeError("a randomly initialised model needs --tokenizer_name")

    with clean_on_failure(training_args.output_dir):
        splits = load_splits(data_args, model_args, training_args.do_train, training_args.do_eval)
        set_seed(training_args.seed)
        if model_args.model_name_or_path is not None:
            model_path, base_model = resolve_model(model_args.model_name_or_path)
            model = AutoModelForSeq2SeqLM.from_pretrained(model_path, cache_dir=model_args.cache_dir)
        else:
            model_path, base_model = model_args.config_name, f"random init of {model_args.config_name}"
            model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(model_args.config_name))
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path,
                                                  cache_dir=model_args.cache_dir)
        if model.config.decoder_start_token_id is None:
            raise RecipeError(f"{model_path}: the model config has no decoder_start_token_id; not a seq2seq model?")

        def tokenize(batch: dict[str, list[str]]) -> Any:
            enc = tokenizer([data_args.source_prefix + s for s in batch["source"]], truncation=True,
                            max_length=data_args.max_source_length)
            enc["labels"] = tokenizer(text_target=batch["target"], truncation=True,
                                      max_length=data_args.max_target_length)["input_ids"]
            return enc

        with training_args.main_process_first(desc="tokenizing"):
            encoded = {name: ds.map(tokenize, batched=True, remove_columns=["source", "target"])
                       for name, ds in splits.items()}
        gen_len = data_args.val_max_target_length or data_args.max_target_length
        training_args.generation_max_length = training_args.generation_max_length or gen_len
        if data_args.num_beams is not None:
            training_args.generation_num_beams = data_args.num_beams
        trainer = SAMSeq2SeqTrainer(
            model=model, args=training_args, train_dataset=encoded.get("train"),
            eval_dataset=encoded.get("validation"), processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8),
            compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        )
        train_and_save(trainer)
        metrics: dict[str, float] = {}
        if training_args.do_eval:
            metrics = trainer.evaluate(max_length=gen_len, num_beams=data_args.num_beams, metric_key_prefix="eval")
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
            headline = {k: float(metrics[f"eval_{k}"]) for k in ("bleu", "chrf") if f"eval_{k}" in metrics}
            if headline:
                print("validation: " + ", ".join(f"{k} {v:.2f}" for k, v in headline.items()))
            if training_args.should_save and headline:
                pair = f"{data_args.source_lang}-{data_args.target_lang}"
                write_model_card(training_args.output_dir, CardInfo(
                    model_name=Path(training_args.output_dir).name, base_model=base_model, task_type="translation",
                    task_name=f"translation {pair}", dataset_id=data_args.dataset_name or "local-jsonl",
                    dataset_config=data_args.dataset_config_name or pair, dataset_split="validation",
                    data_source=(f"{data_args.train_file} / {data_args.validation_file}" if data_args.train_file
                                 else f"the Hub's {data_args.dataset_name} {data_args.dataset_config_name}")
                    + f" ({len(splits.get('train', []))} training pairs)",
                    metrics=headline,
                    command="python recipes/translation/run_translation.py "
                    + shlex.join(sys.argv[1:] if argv is None else argv),
                ), trainer)
        push_with_card(trainer)
    return metrics


if __name__ == "__main__":
    run_main(main)
