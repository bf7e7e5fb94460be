"""Token classification (named entities): fine-tune a Transformers encoder to tag every word.

    accelerate launch recipes/token_cls.py --config recipes/configs/token_cls/demo.yaml [--learning_rate 5e-5 ...]
    python recipes/token_cls.py --config recipes/configs/token_cls/conll2003_minilm.yaml

Supports: CoNLL files (`token<TAB or spaces>tag` a line, a blank line between sentences, -DOCSTART- skipped,
LF or CRLF; with more columns the tag is the last one), JSON lines with word and tag lists, or a Hub dataset
with word and tag columns (integer tags with ClassLabel names or --tag_names, or strings). IOB1, BIO, BIOES
and IO tags are learnt as given and checked before anything loads (an I-X after O is an error naming the
line). Without a validation file, a seeded validation split is held out of train, stratified by each
sentence's most frequent entity type. Labels sit on each word's first sub-token, or on all of them
(--label_all_subtokens); a sentence longer than --max_seq_length becomes windows overlapping by --stride
tokens, and each word is predicted once, in the window where it has the most context. Every labelled token
weighs the same in the training loss, whatever the length of the sentences batched with it (--loss_per_token;
false: transformers' mean over each batch, which over-weighs batches of short sentences, see
bench/token_sampling.py). Metrics are word-level: seqeval entity
precision / recall / F1, overall and per type, and token accuracy. Default strategy (RECIPE_DEFAULTS, chosen on
bench/token_suite.py): frozen embeddings, lr 1e-4 with the head at 1e-3 and layer decay 0.9, 10% warm-up, at least
250 optimizer steps. Every ftlib strategy flag and every standard TrainingArguments flag work.
K-fold cross-validation of the training sentences before the final model (--cv_folds, --cv_only; ftlib.run.cv), plain
shuffled folds, grouped by --group_column (a field of JSON lines, a column of a Hub dataset: a document, say).
Writes to --output_dir: the model (safetensors) and tokenizer, all_results.json, validation_predictions.conll
and test_predictions.conll (`token<TAB>gold<TAB>predicted`, a blank line between sentences), a model card and
a SHA-256 manifest; --push_to_hub pushes them once, at the end, behind --push_min_metric; with --cv_folds,
cv_results.json and cv_oof_predictions.csv (gold and predicted tags of each training sentence).
Does not support: slow (non-fast) tokenizers, test files without tags, document context across sentences,
nested entities, CRF heads.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    TrainingArguments,
)

from ftlib.data.files import check_empty_inputs, limit_samples, load_data, source_name
from ftlib.data.labels import SINGLE, LabelInfo, ensure_validation
from ftlib.data.text import effective_max_length
from ftlib.data.token import (
    IGNORE_INDEX,
    check_tags,
    detect_scheme,
    from_hub_columns,
    label_list,
    load_token_data,
    sentence_strata,
    tokenize_dataset,
    write_conll_predictions,
)
from ftlib.outputs.report import EvalExamples, argmax_with_probs
from ftlib.run.cli import parse_args
from ftlib.run.cv import Fold, TagColumns, plan_folds
from ftlib.run.steps import (
    fit,
    predict,
    publish,
    save_model,
    set_best_metric,
    start_run,
)
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.metrics import WordMetrics
from ftlib.tasks.token_classification import TASK, TokenDataArguments
from ftlib.training.arguments import ModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.modeling import load_config_for_labels, load_model, load_tokenizer
from ftlib.training.trainer import (
    FtTrainer,
    class_weights_from_labels,
    labelled_tokens_per_batch,
    prepare_model,
)

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def load_sentences(data_args: TokenDataArguments, cache_dir: str | None = None, keep: tuple[str, ...] = ()) -> DatasetDict:
    """Every split as ``id`` / ``tokens`` / ``tags`` (string tags), from local files or a Hub dataset; ``keep``:
    other columns of the training data to keep (``--group_column``)."""
    if data_args.train_file:
        return load_token_data(
            data_args.train_file, data_args.validation_file, data_args.test_file,
            data_args.tokens_column, data_args.tags_column, data_args.tag_names, keep=keep,
        )
    hub = load_data(data_args, cache_dir)
    return from_hub_columns(hub, data_args.tokens_column, data_args.tags_column, data_args.tag_names,
                            source=data_args.dataset_name, keep=keep)


def main(
    model_args: ModelArguments,
    data_args: TokenDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: logging, checks, output directory, Hub settings, extra metrics, seed
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- data: words and string tags per sentence
    keep = (ft_args.group_column,) if ft_args.group_column else ()
    raw = check_empty_inputs(load_sentences(data_args, model_args.cache_dir, keep), ["tokens"], data_args, "sentence")
    sources = {split: source_name(data_args, split) for split in raw}

    # -- labels: the scheme, every split checked against it, tags from train (an unseen one is an error); without a
    # validation split, a seeded one held out of train, stratified by each sentence's most frequent entity type
    scheme = data_args.tag_scheme or detect_scheme(raw["train"]["tags"])
    for split in raw:
        check_tags(raw[split], scheme, sources[split])
    labels = LabelInfo(SINGLE, label_list(raw, sources))  # each token one class
    raw = ensure_validation(raw, None, data_args.validation_split_percentage, training_args.seed,
                            strata=sentence_strata(raw["train"]["tags"]))
    raw = limit_samples(raw, data_args)
    folds = plan_folds(raw["train"], ft_args, training_args.seed, sources["train"])  # --cv_folds (not stratified)

    # -- tokenizer and label config (the model is built with its trainer, below: once, and once per fold)
    checkpoint = prepare_checkpoint(model_args, training_args)  # short names converted once, main process first
    tokenizer = load_tokenizer(model_args, checkpoint)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_args.model_name_or_path}: token classification needs a fast tokenizer (word ids)")
    config = load_config_for_labels(model_args, labels.num_labels, labels.id2label, labels.problem_type,
                                    checkpoint=checkpoint)

    # -- tokenize: windows of at most max_length tokens, labels on sub-tokens; the model sees only its inputs
    max_length = effective_max_length(tokenizer, config, data_args.max_seq_length)
    windows_of = partial(tokenize_dataset, tokenizer=tokenizer, label2id=labels.label2id, max_length=max_length,
                         label_all_subtokens=data_args.label_all_subtokens, stride=data_args.stride,
                         num_proc=data_args.preprocessing_num_workers)
    with training_args.main_process_first(desc="tokenizing"):
        windows = {split: windows_of(raw[split]) for split in raw}
    inputs = {split: model_inputs(w, tokenizer) for split, w in windows.items()}

    # -- model, strategy, trainer: built fresh for the final model, each search trial and each fold
    set_best_metric(training_args, "f1", True)
    word_metrics = {split: WordMetrics(raw[split], windows[split], labels.id2label, scheme, run.extra_metrics)
                    for split in ("validation", "test") if split in raw}  # one per split: no mode to switch
    build = partial(build_trainer, validation=inputs["validation"], validation_metrics=word_metrics["validation"],
                    model_args=model_args, data_args=data_args, ft_args=ft_args, checkpoint=checkpoint, config=config,
                    tokenizer=tokenizer, labels=labels)
    folds_of = partial(sentence_fold, sentences=raw["train"], windows_of=windows_of, build=build, tokenizer=tokenizer,
                       id2label=labels.id2label, scheme=scheme, extra_metrics=run.extra_metrics)

    # -- search (--hp_search), cross-validation (--cv_folds), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, inputs["train"], training_args, ft_args, run, folds, folds_of, raw["train"]["id"])
    if trainer is None:
        return metrics

    # -- evaluate and predict: word-level metrics, predictions written back as CoNLL
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split not in raw:
            continue
        trainer.compute_metrics = word_metrics[split]
        pred_ids, split_metrics = predict(trainer, inputs[split], prefix)
        metrics.update(split_metrics)
        if trainer.is_world_process_zero():
            path = Path(training_args.output_dir) / f"{split}_predictions.conll"
            write_conll_predictions(path, raw[split], word_metrics[split].tags(pred_ids))

    # -- save, card, manifest, push
    save_model(trainer, ft_args)
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path),
        task="token-classification", dataset=data_args.dataset_name or data_args.train_file, label_names=labels.names,
        report=EvalExamples.tokens(raw["validation"], windows["validation"], scheme),
    )
    return metrics


def model_inputs(windows: Dataset, tokenizer) -> Dataset:
    """The columns of tokenized windows that the model takes, and their labels."""
    return windows.select_columns([c for c in tokenizer.model_input_names if c in windows.column_names] + ["labels"])


def build_trainer(
    args: TrainingArguments,
    train: Dataset,
    *,
    validation: Dataset,
    validation_metrics: WordMetrics,
    model_args: ModelArguments,
    data_args: TokenDataArguments,
    ft_args: FineTuneArguments,
    checkpoint: str,
    config,
    tokenizer,
    labels: LabelInfo,
) -> FtTrainer:
    """A fresh model with the run's strategy (LoRA, freezing; learning-rate groups and gradual unfreezing are built
    by the trainer) and its trainer on the windows ``train``: the final model's, a search trial's or a fold's."""
    model = load_model(AutoModelForTokenClassification, model_args, config, checkpoint)
    model, anatomy = prepare_model(model, ft_args, task_type="TOKEN_CLS")
    train_labels = train["labels"]
    class_weights = class_weights_from_labels(
        ft_args.class_weights, [i for row in train_labels for i in row if i != IGNORE_INDEX], labels.num_labels
    )
    # every labelled token the same weight, whatever the length of the sentences batched with it (see compute_loss)
    tokens_per_batch = (labelled_tokens_per_batch(train_labels, args.per_device_train_batch_size, class_weights)
                        if data_args.loss_per_token else None)
    return FtTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None
        ),
        compute_metrics=validation_metrics,
        preprocess_logits_for_metrics=argmax_with_probs,  # ids, and the probabilities the report needs
        ft_args=ft_args,
        anatomy=anatomy,
        class_weights=class_weights,
        token_loss_normalizer=tokens_per_batch,
    )


def sentence_fold(args, train_rows, held_rows, *, sentences: Dataset, windows_of, build, tokenizer, id2label, scheme,
                  extra_metrics) -> Fold:
    """A cross-validation fold (ftlib.run.cv): its training and held-out sentences tokenized afresh, a trainer on the
    first, word-level metrics and out-of-fold tags on the second."""
    held = sentences.select(held_rows)
    held_windows = windows_of(held)
    metrics = WordMetrics(held, held_windows, id2label, scheme, extra_metrics)
    trainer = build(args, model_inputs(windows_of(sentences.select(train_rows)), tokenizer))
    return Fold(trainer, model_inputs(held_windows, tokenizer), TagColumns(metrics), metrics)


if __name__ == "__main__":
    main(*parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), defaults=RECIPE_DEFAULTS))
