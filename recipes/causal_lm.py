"""Causal language models: supervised fine-tuning on chats, prompt / completion pairs, instructions or plain text.

    accelerate launch recipes/causal_lm.py --config recipes/configs/causal_lm/demo.yaml [--learning_rate 1e-4 ...]
    python recipes/causal_lm.py --model_name_or_path smollm2-135m-instruct --train_file chats.jsonl --output_dir out

Supports: any AutoModelForCausalLM checkpoint (Hub id or folder) and local GGUF files (--gguf_file, a .gguf path,
or the short name smollm2-135m-instruct), dequantized once into a safetensors folder; data from csv / jsonl /
parquet or a Hub dataset in four shapes (messages rendered with the chat template, prompt + completion,
instruction / input / output through a template, plain text); the loss on answer tokens only (every assistant turn;
--train_on_prompt trains all), averaged over the answer tokens of a whole accumulated step on every process;
packing without attention across examples (--packing), or dynamic padding with length-grouped batches; long rows cut
from the prompt side (--drop_long drops them); LoRA by default (every attention and MLP projection; rsLoRA, DoRA,
LoRA+), QLoRA on CUDA (--load_in_4bit), or full fine-tuning with --lora false and every ftlib strategy flag
(frozen embeddings, lower blocks, layer-wise rates, gradual unfreezing) on the decoder blocks; eval loss and
perplexity on answer tokens, and with --generation_eval N greedy answers scored by exact match and ROUGE-L.
Writes to --output_dir: the adapter (or --lora_save merged: a plain model), the tokenizer with its chat template,
generation_config.json, all_results.json, test_generations.jsonl (for --test_file prompts), report, model card,
manifest; --push_to_hub as in the other recipes. New prompts: ftlib-predict --model OUT --input prompts.jsonl.
Does not support: --cv_folds, --compare_head_only / --probe_first (a tied LM head is the embedding matrix),
preference tuning (DPO), multimodal chats.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from transformers import AutoConfig, TrainingArguments

from ftlib.data.files import source_name
from ftlib.data.text import effective_max_length
from ftlib.outputs.report import REPORT_DIR
from ftlib.run.cli import parse_args
from ftlib.run.steps import evaluate, fit, publish, save_model, start_run
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.causal_lm import TASK, CausalLMDataArguments
from ftlib.tasks.causal_lm_data import (
    CausalLMCollator,
    PackedCollator,
    encode_prompts,
    load_causal_lm_data,
    prepare_tokenizer,
)
from ftlib.tasks.causal_lm_generate import (
    CausalLMTrainer,
    GenerationEval,
    generate_answers,
    score_generations,
)
from ftlib.training.arguments import CausalLMModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.decoder import (
    add_tokens,
    check_load_in_4bit,
    ensure_pad_token,
    fit_embeddings,
    lm_head_trains,
    load_causal_lm,
    new_token_training,
)
from ftlib.training.modeling import checkpoint_kwargs, load_tokenizer
from ftlib.training.trainer import prepare_model

logger = logging.getLogger("ftlib.causal_lm")

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def main(
    model_args: CausalLMModelArguments,
    data_args: CausalLMDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: what this recipe refuses, then logging, checks, output directory, Hub settings, seed
    check_load_in_4bit(model_args, ft_args, training_args)  # CUDA, --lora and bitsandbytes, before anything loads
    refused = [flag for flag, on in (("--cv_folds", ft_args.cv_folds), ("--compare_head_only", ft_args.compare_head_only
               != "no"), ("--probe_first", ft_args.probe_first != "no")) if on]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not supported for causal LMs (folds of generated text have no "
                         "labels to stratify; a tied LM head is the embedding matrix, not a fresh head)")
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- tokenizer: a GGUF file or short name converted once (main process first), the chat template, a pad token
    checkpoint = prepare_checkpoint(model_args, training_args)
    tokenizer = prepare_tokenizer(load_tokenizer(model_args, checkpoint), data_args)
    ensure_pad_token(tokenizer)
    new_ids = add_tokens(tokenizer, None, model_args.new_tokens or [])  # before tokenizing: markers stay whole
    new_token_training(new_ids, ft_args)  # refused now, before anything trains, where the new rows could not train
    config = AutoConfig.from_pretrained(checkpoint, **checkpoint_kwargs(model_args))
    data_args.max_seq_length = effective_max_length(tokenizer, config, data_args.max_seq_length)

    # -- data: rendered, answer-only labels, long rows cut or dropped (said), packed with --packing
    with training_args.main_process_first(desc="tokenizing"):
        data = load_causal_lm_data(data_args, tokenizer, training_args.seed, model_args.cache_dir)
    validation = data.encoded["validation"]
    generation = None
    if data_args.generation_eval and data.data_format != "text":
        prompts = encode_prompts(data.raw["validation"].select(range(min(data_args.generation_eval,
                                 len(data.raw["validation"])))), tokenizer, data_args, data.data_format)
        generation = GenerationEval(list(prompts["input_ids"]), [r or "" for r in prompts["reference"]],
                                    max_new_tokens=data_args.max_new_tokens,
                                    batch_size=training_args.per_device_eval_batch_size,
                                    prompt_texts=list(prompts["prompt"]))

    # -- model, strategy, trainer: built fresh for the final model and each search trial
    build = partial(build_trainer, validation=validation, model_args=model_args, data_args=data_args, ft_args=ft_args,
                    checkpoint=checkpoint, tokenizer=tokenizer, generation=generation, new_ids=new_ids)

    # -- search (--hp_search), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, data.encoded["train"], training_args, ft_args, run,
                           head_trains=lm_head_trains(ft_args, config, new_ids))
    if trainer is None:
        return metrics

    # -- evaluate: loss and perplexity on answer tokens; with --generation_eval, scored answers
    metrics.update(evaluate(trainer, validation))

    # -- predict: greedy answers for the test prompts (scored where the rows have answers)
    if "test" in data.raw and data.data_format != "text":
        metrics.update(generate_test(trainer, tokenizer, data, data_args))

    # -- save, card, manifest, push (the report adds the worst validation answers of the last evaluation)
    save_model(trainer, ft_args)
    if trainer.is_world_process_zero() and generation is not None and generation.table():
        report = Path(training_args.output_dir) / REPORT_DIR
        report.mkdir(parents=True, exist_ok=True)
        (report / "worst_generations.md").write_text(generation.table(k=20), encoding="utf-8")
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).generation_config.save_pretrained(training_args.output_dir)
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path),
        task=TASK.pipeline_tag, dataset=data_args.dataset_name or data_args.train_file,
        settings={"data_format": data.data_format, "packing": data_args.packing,
                  "max_seq_length": data_args.max_seq_length, "train_on_prompt": data_args.train_on_prompt},
        sections=card_sections(tokenizer, generation),
    )
    return metrics


def build_trainer(args: TrainingArguments, train, *, validation, model_args, data_args, ft_args, checkpoint, tokenizer,
                  generation, new_ids=()) -> CausalLMTrainer:
    """A fresh model (fp32 on CPU; --bf16 trains it in mixed precision; 4-bit with --load_in_4bit) with the run's
    strategy and its trainer on ``train``: the final model's or a search trial's (ftlib.run.hp_search)."""
    model = load_causal_lm(model_args, checkpoint, args)
    ensure_pad_token(tokenizer, model)
    fit_embeddings(tokenizer, model)  # --new_tokens: rows for the added tokens, which then train
    model, anatomy = prepare_model(model, ft_args, task_type="CAUSAL_LM",
                                   trainable_token_indices=new_token_training(list(new_ids), ft_args))
    multiple = 8 if args.fp16 or args.bf16 else None
    collator = (PackedCollator(tokenizer.pad_token_id, model.config._attn_implementation, pad_to_multiple_of=multiple)
                if data_args.packing else CausalLMCollator(tokenizer.pad_token_id, pad_to_multiple_of=multiple))
    return CausalLMTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=CausalLMCollator(tokenizer.pad_token_id, pad_to_multiple_of=multiple),  # evaluation: unpacked
        ft_args=ft_args,
        anatomy=anatomy,
        generation_eval=generation,
        train_collator=collator,
    )


def generate_test(trainer, tokenizer, data, data_args) -> dict[str, float]:
    """``test_generations.jsonl``: a greedy answer per test prompt; exact match and ROUGE-L where rows have answers."""
    prompts = encode_prompts(data.raw["test"], tokenizer, data_args, data.data_format)
    model = trainer.accelerator.unwrap_model(trainer.model)
    answers = generate_answers(model, tokenizer, list(prompts["input_ids"]), max_new_tokens=data_args.max_new_tokens,
                               batch_size=trainer.args.per_device_eval_batch_size)
    references = list(prompts["reference"])
    if trainer.is_world_process_zero():
        with (Path(trainer.args.output_dir) / "test_generations.jsonl").open("w", encoding="utf-8") as handle:
            for row, (answer, reference) in enumerate(zip(answers, references)):
                handle.write(json.dumps({"id": row, "generated": answer, "reference": reference}, ensure_ascii=False)
                             + "\n")
    scored = [(a, r) for a, r in zip(answers, references) if r is not None]
    if not scored:
        return {}
    metrics = score_generations(*zip(*scored)).metrics("test_")
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    logger.info("answers for %d test prompts in %s", len(answers), source_name(data_args, "test"))
    return metrics


def card_sections(tokenizer, generation: GenerationEval | None) -> list[str]:
    """The model card's causal-LM sections: how to prompt it, and the worst answers of the last evaluation."""
    lines = ["## Using the model", "", "```python", "from transformers import pipeline", "",
             'generate = pipeline("text-generation", model="<this folder or repo>")',
             'print(generate([{"role": "user", "content": "..."}], max_new_tokens=128)[0]["generated_text"])'
             if tokenizer.chat_template else 'print(generate("...", max_new_tokens=128)[0]["generated_text"])',
             "```", ""]
    if tokenizer.chat_template:
        lines += ["The tokenizer carries the chat template the model was trained with.", ""]
    table = generation.table() if generation is not None else ""
    if table:
        lines += ["## Worst validation answers (ROUGE-L)", "", table]
    return lines


if __name__ == "__main__":
    main(*parse_args((CausalLMModelArguments, CausalLMDataArguments, FineTuneArguments, TrainingArguments),
                     defaults=RECIPE_DEFAULTS))
