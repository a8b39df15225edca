"""The labels as the token sequences the model answers with, and their trie: what the scorer reads probabilities
from and what the label-restricted training objective (`label_softmax_loss`) trains: the two agree token for token.

Each answer is tokenised exactly as it follows the prompt in training, up to and including the end-of-turn token, so
no label's tokens are a prefix of another's. The trie maps a node (a token prefix) to its distinct next tokens; a
label's probability is the product, over the nodes on its path where the trie branches, of the next token's
probability renormalised over that node's children (`fintrl.scoring.scorer`'s `trie` and `first_token` modes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fintrl.errors import ScoringError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fintrl.model.prompts import PromptBuilder


@dataclass(frozen=True)
class LabelTokens:
    sequences: list[list[int]]  # per label: its answer's tokens, end-of-turn included
    children: dict[tuple[int, ...], list[int]]  # trie node (token prefix) -> its distinct next tokens, sorted
    stop_ids: list[int]  # the tokens that end a turn (the model's generation eos, the tokenizer's eos)

    @classmethod
    def build(
        cls, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, builder: PromptBuilder
    ) -> LabelTokens:
        """The prompt's answers as this tokenizer renders them after the prompt (`model`'s eos ends a turn too)."""
        stop_ids = _stop_ids(model, tokenizer)
        return cls.from_sequences(_answer_token_ids(tokenizer, builder, stop_ids), stop_ids)

    @classmethod
    def from_sequences(cls, sequences: list[list[int]], stop_ids: list[int]) -> LabelTokens:
        children: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            for j in range(len(seq)):
                children.setdefault(tuple(seq[:j]), set()).add(seq[j])
        return cls(sequences, {node: sorted(kids) for node, kids in children.items()}, stop_ids)

    @property
    def distinct_first(self) -> bool:
        """Labels start with distinct tokens: the trie branches only at its root."""
        return len(self.children[()]) == len(self.sequences)

    @property
    def branches(self) -> list[tuple[int, ...]]:
        """The nodes below the root where the trie branches: the only ones past the prompt that need the model."""
        return [node for node, kids in self.children.items() if node and len(kids) > 1]

    def index(self) -> dict[tuple[int, ...], int]:
        """Label index of each full token sequence (a trie leaf)."""
        return {tuple(seq): i for i, seq in enumerate(self.sequences)}


def encode_prompt(tokenizer: PreTrainedTokenizerBase, builder: PromptBuilder, text: str) -> list[int]:
    """The prompt's token ids, ready for the answer (chat template with the generation prompt)."""
    return list(
        tokenizer.apply_chat_template(
            builder.messages(text), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def _stop_ids(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id if model is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return ids + [tokenizer.eos_token_id]


def _answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, builder: PromptBuilder, stop_ids: list[int]
) -> list[list[int]]:
    """Each answer's tokens exactly as they follow the prompt in training, up to the end-of-turn token."""
    stop = set(stop_ids)
    messages = builder.messages("x")
    prompt = encode_prompt(tokenizer, builder, "x")
    sequences = []
    for answer in builder.answers:
        full = list(
            tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=False
            )
        )
        if full[: len(prompt)] != prompt:
            raise ScoringError(
                "the chat template renders the prompt differently with and without an answer; "
                "fintrl cannot align the label tokens (set model.chat_template)"
            )
        cont = full[len(prompt) :]
        end = next((i for i, t in enumerate(cont) if t in stop), None)
        sequences.append(cont[: end + 1] if end is not None else cont)
    if len({tuple(s) for s in sequences}) != len(sequences):
        raise ScoringError(f"labels {builder.answers} tokenise to identical sequences")
    return sequences


def label_softmax_loss(
    logits: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor, labels: LabelTokens
) -> tuple[torch.Tensor, int, int]:
    """The summed -log p(gold label) over a batch's rows, p as the scorer reads it, with how many rows had a whole
    label and how many of them the scorer would label right.

    `logits` [N, V] are the model's at the N scored answer tokens (row-major), `tokens` those tokens, `rows` each
    one's row. Walking each row's answer down the label trie, every node that branches adds the cross-entropy of
    the gold child against its siblings; -log p(gold) is their sum, and the scorer's greedy label is right exactly
    when the gold child wins at each of them. What follows a whole label (a newline after end-of-turn) is not scored;
    a row whose answer was cut before its label ends is left out.
    """
    import torch

    flat_tokens, flat_rows = tokens.tolist(), rows.tolist()
    leaves, whole = labels.index(), 0
    terms: list[tuple[int, list[int], int, int]] = []  # (scored token, its node's children, gold child, whole row)
    for _, run in itertools.groupby(range(len(flat_rows)), key=flat_rows.__getitem__):
        node: tuple[int, ...] = ()
        found = []
        for flat in run:
            kids = labels.children.get(node)
            if kids is None:  # the label is whole
                break
            token = flat_tokens[flat]
            if token not in kids:
                raise ScoringError(
                    f"train.objective label_softmax: answer tokens {[*node, token]} are not a label's as the scorer "
                    f"reads them (labels {labels.sequences}); use train.objective token_ce"
                )
            if len(kids) > 1:
                found.append((flat, kids, kids.index(token)))
            node += (token,)
        if node in leaves:
            terms += [(flat, kids, gold, whole) for flat, kids, gold in found]
            whole += 1
    if not terms:
        return logits.sum() * 0.0, 0, 0
    picks, children, gold, term_row = zip(*terms)
    width = max(map(len, children))
    device = logits.device
    index = torch.tensor([k + k[:1] * (width - len(k)) for k in children], device=device)
    valid = torch.tensor([[True] * len(k) + [False] * (width - len(k)) for k in children], device=device)
    z = logits[torch.tensor(picks, device=device)].gather(1, index).masked_fill(~valid, float("-inf"))
    target = torch.tensor(gold, device=device)
    nll = torch.nn.functional.cross_entropy(z, target, reduction="sum")
    wrong = torch.zeros(whole, device=device).index_add(
        0, torch.tensor(term_row, device=device), (z.argmax(-1) != target).float()
    )
    return nll, whole, int((wrong == 0).sum().item())
