"""Score generated radiology reports against reference reports: BLEU, ROUGE-L and the clinical F1 scores."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _normalise(text: str) -> str:
    # Reports carry line breaks and runs of spaces; sacrebleu scores one line per report.
    return " ".join(text.split())


def _check_pairs(predictions: list[str], references: list[str], caller: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{caller}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{caller}: no reports to score")


def report_metrics(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU-1 and BLEU-4 and mean ROUGE-L F1 of generated reports, all on a 0-1 scale.

    Conventions (those of radiology report generation papers, which lowercase the reports):

    - BLEU: ``sacrebleu`` corpus BLEU (statistics pooled over all reports, one reference each), lowercased,
      ``13a`` tokeniser (punctuation split off as tokens), ``exp`` smoothing (sacrebleu's default; it only
      matters when an n-gram order has no match in the whole corpus). BLEU-1 is
      ``BLEU(max_ngram_order=1)``: clipped unigram precision times the brevity penalty. sacrebleu's
      0-100 score is divided by 100. Signatures: ``nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0``.
    - ROUGE-L: Google's ``rouge-score`` ``rougeL`` F1 per report pair, averaged over pairs; its tokeniser
      lowercases and splits on non-alphanumeric characters, with the Porter stemmer on (ROUGE-1.5.5's
      ``-m``). The whole report is one sequence (no sentence split, unlike ``rougeLsum``).

    Whitespace runs (line breaks included) are collapsed to one space first. An empty prediction is
    allowed and scores 0. Returns ``{"bleu_1", "bleu_4", "rouge_l", "count"}``.
    """
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references, "report_metrics")
    hyps = [_normalise(text) for text in predictions]
    refs = [_normalise(text) for text in references]
    bleu_1 = BLEU(lowercase=True, tokenize="13a", max_ngram_order=1).corpus_score(hyps, [refs]).score / 100.0
    bleu_4 = BLEU(lowercase=True, tokenize="13a", max_ngram_order=4).corpus_score(hyps, [refs]).score / 100.0
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    rouge_l = float(np.mean([scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs)]))
    return {"bleu_1": float(bleu_1), "bleu_4": float(bleu_4), "rouge_l": rouge_l, "count": len(hyps)}


CHEXBERT_PIP = "pip install f1chexbert==0.0.2 appdirs"
CHEXBERT_NEEDS = (
    "CheXbert F1 needs the CheXbert labeler checkpoint chexbert.pth (Smit et al., 'CheXbert: Combining "
    "Automatic Labelers and Expert Annotations for Accurate Radiology Report Labeling Using BERT', EMNLP 2020; "
    "file chexbert.pth of the Hugging Face repo StanfordAIMI/RRG_scorers) and bert-base-uncased's tokenizer "
    "and config in the local Hugging Face cache; pass the file's path as chexbert_weights"
)
RADGRAPH_PIP = "pip install radgraph==0.1.18"
RADGRAPH_MODEL_TYPES = ("radgraph", "radgraph-xl", "modern-radgraph-xl")
RADGRAPH_NEEDS = (
    "RadGraph F1 needs a RadGraph model folder named after its model type (radgraph-xl: Delbrouck et al., "
    "'RadGraph-XL', Findings of ACL 2024; radgraph: Jain et al., 'RadGraph', NeurIPS 2021 Datasets and "
    "Benchmarks), i.e. radgraph-xl.tar.gz of the Hugging Face repo StanfordAIMI/RRG_scorers extracted into a "
    "folder radgraph-xl/ holding config.json, vocabulary/ and weights.th, plus the transformer its config.json "
    "names in the local Hugging Face cache; pass the folder's path as radgraph_weights"
)
RADGRAPH_TRANSFORMERS_5 = (
    "radgraph 0.1.18 (the newest on PyPI) cannot run with transformers 5, which this project requires: its "
    "vendored AllenNLP calls tokenizer.encode_plus, removed in transformers 5. The weights folder {folder} is "
    "in place; score in a separate environment (pip install radgraph==0.1.18 'transformers<5') with "
    "F1RadGraph(reward_level='all', model_type='{model_type}', model_cache_dir='{parent}')"
)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face Hub downloads inside the block: transformers then reads only the local cache."""
    import huggingface_hub.constants as hub_constants

    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True  # read by huggingface_hub.is_offline_mode() at every call
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before


class EncodePlusTokenizer:
    """A transformers 5 BERT tokenizer with the ``encode_plus(tokens)`` that f1chexbert 0.0.2 calls.

    transformers 5 removed ``encode_plus``; f1chexbert passes it a list of word pieces and reads
    ``["input_ids"]``: the pieces' ids between [CLS] and [SEP]. Everything else goes to the tokenizer.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def encode_plus(self, tokens: list[str]) -> dict[str, list[int]]:
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        return {"input_ids": [self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id]}


def _chexbert_f1(predictions: list[str], references: list[str], weights: Path) -> dict[str, float]:
    import torch
    from sklearn.metrics import f1_score

    try:
        import f1chexbert.f1chexbert as chexbert_module
    except ImportError as error:
        raise ImportError(f"chexbert_weights is set but the f1chexbert package is missing: {CHEXBERT_PIP}") from error

    # f1chexbert reads <CACHE_DIR>/chexbert.pth (downloading it from the Hub when absent): point CACHE_DIR at
    # a folder holding only a link to the given file, so the file is always found and nothing is downloaded.
    saved_cache_dir = chexbert_module.CACHE_DIR
    with tempfile.TemporaryDirectory() as folder, _hub_offline():
        os.symlink(weights.resolve(), os.path.join(folder, "chexbert.pth"))
        chexbert_module.CACHE_DIR = folder
        try:
            scorer = chexbert_module.F1CheXbert()
        except OSError as error:
            raise FileNotFoundError(
                f"CheXbert: f1chexbert loads bert-base-uncased's tokenizer and config by name and the Hub is off "
                f"here, so they must be in the local Hugging Face cache (HF_HOME): {error}"
            ) from error
        finally:
            chexbert_module.CACHE_DIR = saved_cache_dir
    if not hasattr(scorer.tokenizer, "encode_plus"):
        scorer.tokenizer = EncodePlusTokenizer(scorer.tokenizer)
    # The package labels the reports; F1CheXbert.forward's scoring calls a private scikit-learn function
    # whose return changed (sklearn >= 1.6), so the same F1s are computed here from its labels.
    with torch.inference_mode():
        hyp_labels = np.array([scorer.get_label(text.strip()) for text in predictions])  # (N, 14) of 0/1
        ref_labels = np.array([scorer.get_label(text.strip()) for text in references])  # (N, 14)
    five = scorer.target_names_5_index
    return {
        "chexbert_f1_micro_5": float(f1_score(ref_labels[:, five], hyp_labels[:, five], average="micro",
                                              zero_division=0)),
        "chexbert_f1_macro_5": float(f1_score(ref_labels[:, five], hyp_labels[:, five], average="macro",
                                              zero_division=0)),
        "chexbert_f1_micro_14": float(f1_score(ref_labels, hyp_labels, average="micro", zero_division=0)),
        "chexbert_f1_macro_14": float(f1_score(ref_labels, hyp_labels, average="macro", zero_division=0)),
        "chexbert_accuracy_5": float((ref_labels[:, five] == hyp_labels[:, five]).all(axis=1).mean()),
    }


def _radgraph_folder(path: Path) -> str:
    """The model type of a RadGraph model folder, after checking the files RadGraph reads are there."""
    for name in ("config.json", "weights.th", "vocabulary"):
        if not (path / name).exists():
            raise FileNotFoundError(f"RadGraph model folder {path} lacks {name}; {RADGRAPH_NEEDS}")
    if path.name not in RADGRAPH_MODEL_TYPES:
        raise ValueError(f"RadGraph model folder {path} must be named after its model type, one of "
                         f"{RADGRAPH_MODEL_TYPES} (radgraph reads <parent>/<model type>/)")
    return path.name


def _radgraph_f1(predictions: list[str], references: list[str], folder: Path, model_type: str) -> dict[str, float]:
    try:
        from radgraph import F1RadGraph
    except ImportError as error:
        raise ImportError(f"radgraph_weights is set but the radgraph package is missing: {RADGRAPH_PIP}") from error
    with _hub_offline():
        # model_cache_dir/<model_type> holds the extracted model, so radgraph downloads nothing.
        scorer = F1RadGraph(reward_level="all", model_type=model_type, model_cache_dir=str(folder.parent))
    (simple, partial, complete), *_ = scorer(refs=references, hyps=predictions)
    return {"radgraph_f1_simple": float(simple), "radgraph_f1_partial": float(partial),
            "radgraph_f1_complete": float(complete)}


def _existing(path: str, setting: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{setting}: {resolved} does not exist")
    return resolved


def clinical_metrics(predictions: list[str], references: list[str], chexbert_weights: str | None,
                     radgraph_weights: str | None) -> tuple[dict, dict[str, str]]:
    """CheXbert F1 and RadGraph F1 of generated reports, from local weights only (never a Hub download).

    Returns ``(metrics, skipped)``: ``skipped`` maps ``"chexbert_f1"``/``"radgraph_f1"`` to why it was not
    computed. A weights argument of ``None`` skips that metric; a path that does not exist raises
    ``FileNotFoundError``; a missing package raises ``ImportError`` naming the ``pip install`` to run.

    - CheXbert (``f1chexbert`` 0.0.2, not a project dependency): ``chexbert_weights`` is the
      ``chexbert.pth`` checkpoint. It labels 14 observations in every report (present or uncertain = 1)
      and reports micro/macro F1 of the predictions' labels against the references', over the 5 common
      findings (cardiomegaly, edema, consolidation, atelectasis, pleural effusion) and all 14, plus the
      fraction of reports whose 5 labels all match: ``chexbert_f1_{micro,macro}_{5,14}``, ``chexbert_accuracy_5``.
    - RadGraph (``radgraph`` 0.1.18): ``radgraph_weights`` is the extracted model folder named after its
      model type (e.g. ``.../radgraph-xl``). The metrics would be ``radgraph_f1_{simple,partial,complete}``
      (entity; entity + relation; full graph), but radgraph 0.1.18 does not run with transformers 5, so
      with it installed the metric is skipped with that reason once the folder has been checked.
    """
    _check_pairs(predictions, references, "clinical_metrics")
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}

    if chexbert_weights is None:
        skipped["chexbert_f1"] = f"chexbert_weights is not set. {CHEXBERT_NEEDS}"
    else:
        checkpoint = _existing(chexbert_weights, "chexbert_weights")
        if not checkpoint.is_file():
            raise FileNotFoundError(f"chexbert_weights: {checkpoint} is not a file; {CHEXBERT_NEEDS}")
        metrics.update(_chexbert_f1(predictions, references, checkpoint))

    if radgraph_weights is None:
        skipped["radgraph_f1"] = f"radgraph_weights is not set. {RADGRAPH_NEEDS}"
    else:
        folder = _existing(radgraph_weights, "radgraph_weights")
        model_type = _radgraph_folder(folder)
        from transformers import PreTrainedTokenizerBase

        if hasattr(PreTrainedTokenizerBase, "encode_plus"):
            metrics.update(_radgraph_f1(predictions, references, folder, model_type))
        else:
            skipped["radgraph_f1"] = RADGRAPH_TRANSFORMERS_5.format(folder=folder, model_type=model_type,
                                                                    parent=folder.parent)
    return metrics, skipped
