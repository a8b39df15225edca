"""Both exact modes always return a label, match brute-force references, and give probabilities that sum to 1."""

import numpy as np
import pytest
import torch

from fintrl.data.presets import TFN_TOPICS
from fintrl.errors import ScoringError
from fintrl.metrics.classification import classification_metrics
from fintrl.metrics.stats import expected_calibration_error
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import PromptSection
from fintrl.scoring.scorer import INVALID, LabelScorer, parse_answer

TEXTS = [
    "Fed raises rates by 25bp",
    "Shares of XYZ jump 10% after earnings",
    "Company appoints new CFO",
    "New IPO priced at $20 per share",
    "Gold slips as dollar firms",
    "Dividend cut by half",
]
LABEL_SETS = {
    "shared_prefix_multi_token": ["Stock Commentary", "Stock Movement", "Stock", "IPO", "Fed | Central Banks"],
    "three": ["negative", "neutral", "positive"],
    "twenty_topics": list(TFN_TOPICS),
}


def _builder(labels: list[str]) -> PromptBuilder:
    return PromptBuilder.resolve(PromptSection(task="topic"), labels)


def _brute_force_logliks(model, scorer: LabelScorer, texts: list[str]) -> np.ndarray:
    """Full forward over prompt + label for every pair, no cache, no batching."""
    encoded, _ = scorer.encode(texts)
    out = np.zeros((len(texts), len(scorer.label_ids)))
    with torch.no_grad():
        for i, prompt in enumerate(encoded):
            for j, label in enumerate(scorer.label_ids):
                logp = torch.log_softmax(model(torch.tensor([prompt + label])).logits[0].float(), -1)
                out[i, j] = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(label))
    return out


@pytest.mark.parametrize("labels", LABEL_SETS.values(), ids=LABEL_SETS.keys())
def test_loglik_matches_brute_force(tiny_model, tiny_tokenizer, labels) -> None:
    scorer = LabelScorer(tiny_model, tiny_tokenizer, _builder(labels), mode="loglik", batch_size=4)
    result = scorer.score(TEXTS, progress=False)
    reference = _brute_force_logliks(tiny_model, scorer, TEXTS)
    expected = np.exp(reference - reference.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(result.probabilities, expected, atol=2e-4)
    assert result.predictions == expected.argmax(1).tolist()
    np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("labels", LABEL_SETS.values(), ids=LABEL_SETS.keys())
def test_trie_matches_constrained_generate(tiny_model, tiny_tokenizer, labels) -> None:
    """The reference is transformers' own `generate` restricted to the label trie."""
    scorer = LabelScorer(tiny_model, tiny_tokenizer, _builder(labels), mode="trie", batch_size=3)
    result = scorer.score(TEXTS, progress=False)
    encoded, _ = scorer.encode(TEXTS)
    for i, prompt in enumerate(encoded):

        def allowed(_batch_id: int, ids: torch.Tensor, start: int = len(prompt)) -> list[int]:
            done = ids[start:].tolist()
            nxt = {seq[len(done)] for seq in scorer.label_ids if seq[: len(done)] == done and len(seq) > len(done)}
            return sorted(nxt) or [tiny_tokenizer.eos_token_id]

        out = tiny_model.generate(
            torch.tensor([prompt]),
            prefix_allowed_tokens_fn=allowed,
            do_sample=False,
            max_new_tokens=max(map(len, scorer.label_ids)),
            eos_token_id=tiny_tokenizer.eos_token_id,
            pad_token_id=tiny_tokenizer.pad_token_id,
        )
        generated = out[0, len(prompt) :].tolist()
        assert generated == scorer.label_ids[result.predictions[i]], f"text {i}"
    assert INVALID not in result.predictions
    np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-6)


def test_trie_probabilities_are_renormalised_path_products(tiny_model, tiny_tokenizer) -> None:
    labels = LABEL_SETS["shared_prefix_multi_token"]
    fixed = PromptSection(instruction="Classify the topic.")  # same prompt for both label sets
    scorer = LabelScorer(tiny_model, tiny_tokenizer, PromptBuilder.resolve(fixed, labels), mode="trie")
    probs = scorer.score(TEXTS[:2], progress=False).probabilities
    stock = [labels.index(x) for x in ("Stock Commentary", "Stock Movement", "Stock")]
    # the three "Stock..." labels share their first token, so together they hold P(first token = "Stock")
    first = LabelScorer(
        tiny_model,
        tiny_tokenizer,
        PromptBuilder.resolve(fixed, ["Stock", "IPO", "Fed | Central Banks"]),
        mode="first_token",
    )
    np.testing.assert_allclose(
        probs[:, stock].sum(1), first.score(TEXTS[:2], progress=False).probabilities[:, 0], atol=1e-4
    )


def test_auto_uses_first_token_when_exact(tiny_model, tiny_tokenizer) -> None:
    labels = LABEL_SETS["three"]
    auto = LabelScorer(tiny_model, tiny_tokenizer, _builder(labels))
    assert auto.mode == "first_token"
    trie = LabelScorer(tiny_model, tiny_tokenizer, _builder(labels), mode="trie").score(TEXTS, progress=False)
    fast = auto.score(TEXTS, progress=False)
    assert fast.predictions == trie.predictions
    np.testing.assert_allclose(fast.probabilities, trie.probabilities, atol=1e-4)
    assert LabelScorer(tiny_model, tiny_tokenizer, _builder(LABEL_SETS["shared_prefix_multi_token"])).mode == "trie"
    with pytest.raises(ScoringError, match="distinct tokens"):
        LabelScorer(tiny_model, tiny_tokenizer, _builder(LABEL_SETS["shared_prefix_multi_token"]), mode="first_token")


def test_batching_and_order_do_not_change_results(tiny_model, tiny_tokenizer) -> None:
    builder = _builder(LABEL_SETS["shared_prefix_multi_token"])
    one = LabelScorer(tiny_model, tiny_tokenizer, builder, mode="loglik", batch_size=1).score(TEXTS, progress=False)
    many = LabelScorer(tiny_model, tiny_tokenizer, builder, mode="loglik", batch_size=6).score(
        TEXTS[::-1], progress=False
    )
    np.testing.assert_allclose(one.probabilities, many.probabilities[::-1], atol=2e-4)


def test_truncation_is_counted_and_empty_text_rejected(tiny_model, tiny_tokenizer) -> None:
    scorer = LabelScorer(tiny_model, tiny_tokenizer, _builder(LABEL_SETS["three"]), max_length=40)
    result = scorer.score(["word " * 200, "short"], progress=False)
    assert result.n_truncated == 1 and len(result.predictions) == 2
    encoded, _ = scorer.encode(["word " * 200])
    assert len(encoded[0]) <= 40 and encoded[0][-4:] == scorer.encode(["short"])[0][0][-4:]  # template end kept
    with pytest.raises(ScoringError, match="empty texts"):
        scorer.score(["ok", "  "], progress=False)


def test_generate_mode_reports_invalid(tiny_model, tiny_tokenizer) -> None:
    result = LabelScorer(tiny_model, tiny_tokenizer, _builder(LABEL_SETS["three"]), mode="generate").score(
        TEXTS, progress=False
    )
    assert len(result.raw_outputs) == len(TEXTS)
    assert result.n_invalid == sum(parse_answer(t, LABEL_SETS["three"]) == INVALID for t in result.raw_outputs)


def test_parse_answer() -> None:
    answers = ["Stock", "Stock Movement", "IPO"]
    assert parse_answer(" stock movement.", answers) == 1
    assert parse_answer("Stock", answers) == 0
    assert parse_answer("maybe IPO", answers) == INVALID


def test_metrics_with_invalid_and_calibration() -> None:
    metrics = classification_metrics([0, 1, 2, 1], [0, 1, INVALID, 2], ["a", "b", "c"], np.eye(3)[[0, 1, 0, 2]])
    assert metrics["accuracy"] == 0.5 and metrics["invalid_rate"] == 0.25
    assert metrics["confusion_matrix"]["labels"][-1] == "<invalid>"
    assert metrics["per_class"]["b"]["support"] == 2
    assert {"f1_macro", "f1_weighted", "f1_micro", "precision_macro", "recall_macro", "mcc", "ece"} <= set(metrics)
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, np.array([0, 1])) == 0.0
    assert expected_calibration_error(np.array([[0.9, 0.1]]), np.array([1])) == pytest.approx(0.9)
