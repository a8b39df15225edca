"""The label trie and the label-restricted objective: -log p(gold) as the scorer reads p, exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fintrl.data.loading import load_labeled_data
from fintrl.errors import ScoringError
from fintrl.model.label_tokens import LabelTokens, label_softmax_loss
from fintrl.model.loading import load_model, load_tokenizer
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import recipe_from_dict
from fintrl.scoring.scorer import LabelScorer
from fintrl.train import build_trainer
from tests.helpers import tiny_recipe_dict

EOT = 9
# "bull market", "bull run", "bear": the trie branches at the root and below "bull"
TRIE = LabelTokens.from_sequences([[5, 6, EOT], [5, 7, EOT], [8, EOT]], [EOT])


def reference_nll(logits: torch.Tensor, answer: list[int]) -> float:
    """-log p(answer) under the constrained decoder, written out node by node."""
    total, node = 0.0, ()
    for step, token in enumerate(answer):
        kids = TRIE.children[node]
        if len(kids) > 1:
            z = logits[step, kids]
            total -= (z[kids.index(token)] - torch.logsumexp(z, 0)).item()
        node += (token,)
    return total


def test_trie_nodes_and_branches() -> None:
    assert TRIE.children[()] == [5, 8] and TRIE.children[(5,)] == [6, 7] and TRIE.branches == [(5,)]
    assert not TRIE.distinct_first and TRIE.index()[(8, EOT)] == 2


def test_loss_is_the_constrained_decoders_nll_per_row() -> None:
    torch.manual_seed(0)
    answers = [[5, 7, EOT, 13], [8, EOT], [5, 6]]  # a newline after end-of-turn; a third row cut before its end
    rows = torch.tensor([r for r, a in enumerate(answers) for _ in a])
    tokens = torch.tensor([t for a in answers for t in a])
    logits = torch.randn(len(tokens), 16, requires_grad=True)
    loss, whole, correct = label_softmax_loss(logits, tokens, rows, TRIE)
    expected = reference_nll(logits[:4].detach(), answers[0][:3]) + reference_nll(logits[4:6].detach(), answers[1])
    assert whole == 2 and loss.item() == pytest.approx(expected, rel=1e-6)
    greedy = [logits[0, [5, 8]].argmax() == 0 and logits[1, [6, 7]].argmax() == 1, logits[4, [5, 8]].argmax() == 1]
    assert correct == sum(bool(g) for g in greedy)
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [True, True, False, False, True, False, False, False]  # branching nodes only


def test_an_answer_that_is_no_label_is_refused() -> None:
    with pytest.raises(ScoringError, match="not a label's"):
        label_softmax_loss(torch.zeros(2, 16), torch.tensor([5, 8]), torch.tensor([0, 0]), TRIE)


@pytest.mark.parametrize(
    ("verbalizers", "mode"),
    [(None, "first_token"), ({"negative": "bad news", "neutral": "bad or good", "positive": "good"}, "trie")],
)
def test_trainer_loss_equals_the_scorers_probabilities(tmp_path: Path, verbalizers: dict | None, mode: str) -> None:
    """The trainer's label_softmax loss on a batch == the mean -log of the scorer's probability of each gold label,
    on the fast path and on the plain forward (gradient checkpointing, several processes), gradients alike."""
    raw = tiny_recipe_dict(tmp_path / "run", max_train_samples=6) | {"quantization": None}
    raw["train"] |= {"objective": "label_softmax"}
    raw["prompt"] = {**raw.get("prompt", {}), "verbalizers": verbalizers}
    recipe = recipe_from_dict(raw)
    data = load_labeled_data(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    builder = PromptBuilder.resolve(recipe.prompt, data.labels, data.task)
    trainer = build_trainer(recipe, load_model(recipe.model, None), tokenizer, builder, data.train, tmp_path / "run")
    trainer.model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])

    scorer = LabelScorer.from_eval(trainer.model, tokenizer, builder, recipe.eval)
    assert scorer.mode == mode
    result = scorer.score(data.train["text"], progress=False)
    expected = -sum(math.log(result.probabilities[i, g]) for i, g in enumerate(data.train["label"])) / 6

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    fast, fast_grads = loss_and_grads()
    assert fast == pytest.approx(expected, rel=1e-4)
    trainer.args.gradient_checkpointing = True  # routes to the plain forward (the model itself is unchanged)
    plain, plain_grads = loss_and_grads()
    assert plain == pytest.approx(fast, rel=1e-5)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    accuracy = trainer._metrics["eval"]["label_accuracy"][-1]
    assert accuracy == pytest.approx(sum(p == g for p, g in zip(result.predictions, data.train["label"])) / 6)
