from __future__ import annotations

import math
import sys

import pytest
from transformers import BertTokenizer

from mmmed.eval.text_metrics import EncodePlusTokenizer, clinical_metrics, report_metrics


def test_bleu_1_is_clipped_unigram_precision_times_brevity_penalty():
    # Lowercased 13a tokens: ref [the heart size is normal .] (r = 6), hyp [the the heart is normal] (c = 5).
    # "the" is clipped to its 1 reference count: 4 of 5 unigrams match; c < r so BP = exp(1 - 6/5).
    result = report_metrics(["the the heart is normal"], ["The heart size is normal ."])
    assert result["bleu_1"] == pytest.approx(4 / 5 * math.exp(1 - 6 / 5), abs=1e-6)


def test_bleu_4_of_identical_reports_is_one_whatever_the_case_and_line_breaks():
    references = ["No acute cardiopulmonary process.", "Small left pleural effusion.\nHeart size is normal."]
    predictions = ["no acute cardiopulmonary process.", "small left pleural effusion. heart size is normal."]
    result = report_metrics(predictions, references)
    assert result["bleu_4"] == pytest.approx(1.0)
    assert result["bleu_1"] == pytest.approx(1.0)
    assert result["rouge_l"] == pytest.approx(1.0)
    assert result["count"] == 2


def test_rouge_l_is_the_mean_lcs_f1_over_pairs():
    # pred [small left pleural effusions] (4), ref [there is a small pleural effusion] (6); the stemmer maps
    # effusions/effusion to one stem. LCS = small pleural effusion = 3: P = 3/4, R = 3/6.
    precision, recall = 3 / 4, 3 / 6
    f1 = 2 * precision * recall / (precision + recall)
    result = report_metrics(["Small left pleural effusions.", ""],
                            ["There is a small pleural effusion.", "Lungs are clear."])
    assert result["rouge_l"] == pytest.approx((f1 + 0.0) / 2)  # the empty prediction scores 0


def test_report_metrics_rejects_empty_and_mismatched_lists():
    with pytest.raises(ValueError, match="no reports to score"):
        report_metrics([], [])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        report_metrics(["a"], ["a", "b"])


def test_clinical_metrics_without_weights_skips_with_what_is_needed():
    metrics, skipped = clinical_metrics(["no effusion"], ["small effusion"], None, None)
    assert metrics == {}
    assert set(skipped) == {"chexbert_f1", "radgraph_f1"}
    for needed in ("chexbert_weights is not set", "chexbert.pth", "EMNLP 2020", "StanfordAIMI/RRG_scorers"):
        assert needed in skipped["chexbert_f1"]
    for needed in ("radgraph_weights is not set", "radgraph-xl", "weights.th", "RadGraph-XL"):
        assert needed in skipped["radgraph_f1"]


def test_clinical_metrics_missing_paths_raise_naming_them(tmp_path):
    missing = tmp_path / "nowhere" / "chexbert.pth"
    with pytest.raises(FileNotFoundError, match=f"chexbert_weights: {missing} does not exist"):
        clinical_metrics(["a"], ["b"], str(missing), None)
    with pytest.raises(FileNotFoundError, match=f"radgraph_weights: {tmp_path / 'radgraph-xl'} does not exist"):
        clinical_metrics(["a"], ["b"], None, str(tmp_path / "radgraph-xl"))


def test_clinical_metrics_without_f1chexbert_says_what_to_install(tmp_path, monkeypatch):
    checkpoint = tmp_path / "chexbert.pth"
    checkpoint.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "f1chexbert", None)  # makes `import f1chexbert` fail
    with pytest.raises(ImportError, match="pip install f1chexbert==0.0.2"):
        clinical_metrics(["a"], ["b"], str(checkpoint), None)


def test_radgraph_folder_is_checked_then_skipped_under_transformers_5(tmp_path):
    folder = tmp_path / "radgraph-xl"
    (folder / "vocabulary").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks weights.th"):
        clinical_metrics(["a"], ["b"], None, str(folder))
    (folder / "weights.th").write_bytes(b"")
    metrics, skipped = clinical_metrics(["a"], ["b"], None, str(folder))
    assert metrics == {}
    assert "encode_plus, removed in transformers 5" in skipped["radgraph_f1"]
    assert f"model_type='radgraph-xl', model_cache_dir='{tmp_path}'" in skipped["radgraph_f1"]
    renamed = folder.rename(tmp_path / "my-model")
    with pytest.raises(ValueError, match="must be named after its model type"):
        clinical_metrics(["a"], ["b"], None, str(renamed))


def test_encode_plus_shim_gives_the_ids_of_the_tokenizer_call(tmp_path):
    # A BERT vocabulary folder loaded the way f1chexbert loads bert-base-uncased (from_pretrained).
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "small", "pleural", "effusion", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path))
    shim = EncodePlusTokenizer(tokenizer)
    text = "Small pleural effusion."
    assert shim.encode_plus(shim.tokenize(text))["input_ids"] == tokenizer(text)["input_ids"] == [2, 5, 6, 7, 8, 3]
    assert (shim.cls_token_id, shim.sep_token_id) == (2, 3)
