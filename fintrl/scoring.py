"""Map a causal LM's output onto a label set: exactly, with a probability for every class.

Every label is verbalised as the token sequence the model would generate after the prompt (answer + end of
turn). One engine computes, per batch: the prompt once (prefill), then every label continuation at once on a
copy of the prompt's KV cache. The token prefix that every prompt shares (chat template + instruction) is computed
once for the whole dataset and reused by every batch. From those log-probabilities it reads out
- `trie`: constrained greedy decoding, what `generate` would say if it could only say a label, with the
  probabilities of that constrained decoder (each step renormalised over the trie's children);
- `loglik`: full-sequence log-likelihood of each label, softmax-normalised across labels;
- `first_token`: when labels start with distinct tokens, trie decoding is decided by the first token, so only
  the prefill is needed (the cheapest exact mode; `auto` picks it when it applies, else `trie`).
`generate` (free generation + parsing) is kept as a baseline only: it can say things that are not labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fintrl.data import PromptBuilder

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODES = ("auto", "first_token", "trie", "loglik", "generate")
INVALID = -1


@dataclass
class ScoreResult:
    predictions: list[int]  # index into labels; INVALID only in `generate` mode
    probabilities: np.ndarray  # [n, n_labels], rows sum to 1
    mode: str
    n_truncated: int = 0
    raw_outputs: list[str] = field(default_factory=list)  # `generate` mode only

    @property
    def n_invalid(self) -> int:
        return sum(p == INVALID for p in self.predictions)


class LabelScorer:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, builder: PromptBuilder,
                 mode: str = "auto", batch_size: int = 16, max_length: int = 512) -> None:
        if mode not in MODES:
            raise ValueError(f"scoring mode {mode!r}: expected one of {MODES}")
        self.model, self.tokenizer, self.builder = model, tokenizer, builder
        self.batch_size, self.max_length = batch_size, max_length
        self.label_ids = self._label_token_ids()
        distinct_first = len({ids[0] for ids in self.label_ids}) == len(self.label_ids)
        if mode == "first_token" and not distinct_first:
            raise ValueError("first_token scoring needs labels that start with distinct tokens; use trie or loglik")
        self.mode = ("first_token" if distinct_first else "trie") if mode == "auto" else mode
        self._siblings = self._trie_siblings()

    # -- tokenisation -------------------------------------------------------------------------------------
    def _encode_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer.apply_chat_template(self.builder.messages(text), add_generation_prompt=True,
                                                       tokenize=True, return_dict=False))

    def _label_token_ids(self) -> list[list[int]]:
        """Each answer's tokens exactly as they follow the prompt in training, up to the end-of-turn token."""
        stop = set(self._stop_ids())
        messages = self.builder.messages("x")
        prompt = self._encode_prompt("x")
        sequences = []
        for answer in self.builder.answers:
            full = list(self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}],
                                                           tokenize=True, return_dict=False))
            if full[: len(prompt)] != prompt:
                raise ValueError("the chat template renders the prompt differently with and without an answer; "
                                 "fintrl cannot align the label tokens (set model.chat_template)")
            cont = full[len(prompt):]
            end = next((i for i, t in enumerate(cont) if t in stop), None)
            sequences.append(cont[: end + 1] if end is not None else cont)
        if len({tuple(s) for s in sequences}) != len(sequences):
            raise ValueError(f"labels {self.builder.answers} tokenise to identical sequences")
        return sequences

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id if self.model is not None else None
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        return ids + [self.tokenizer.eos_token_id]

    def _trie_siblings(self) -> list[list[list[int]]]:
        """siblings[l][j]: one label per distinct next token at label l's trie node before step j."""
        out = []
        for seq in self.label_ids:
            per_step = []
            for j in range(len(seq)):
                reps: dict[int, int] = {}
                for k, other in enumerate(self.label_ids):
                    if len(other) > j and other[:j] == seq[:j]:
                        reps.setdefault(other[j], k)
                per_step.append(sorted(reps.values()))
            out.append(per_step)
        return out

    def encode(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Prompt ids per text; over-long texts are cut (tokens of the text, template kept) and counted."""
        empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            raise ValueError(f"{len(empty)} empty texts (first rows: {empty[:5]}); remove them before scoring")
        encoded, truncated = [], 0
        for text in texts:
            ids = self._encode_prompt(text)
            if len(ids) > self.max_length:
                text_ids = self.tokenizer(text, add_special_tokens=False).input_ids
                keep = max(1, len(text_ids) - (len(ids) - self.max_length))
                ids = self._encode_prompt(self.tokenizer.decode(text_ids[:keep]))[: self.max_length]
                truncated += 1
            encoded.append(ids)
        if truncated:
            logger.warning("%d of %d texts were longer than eval.max_length=%d tokens and were truncated",
                           truncated, len(texts), self.max_length)
        return encoded, truncated

    # -- scoring ------------------------------------------------------------------------------------------
    def score(self, texts: list[str], progress: bool = True) -> ScoreResult:
        import torch
        from tqdm.auto import tqdm

        encoded, truncated = self.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # length-sorted: little padding
        predictions = [INVALID] * len(texts)
        probabilities = np.zeros((len(texts), len(self.label_ids)))
        raw = [""] * len(texts) if self.mode == "generate" else []
        self.model.eval()
        with torch.inference_mode():
            prefix_len, prefix = self._shared_prefix(encoded) if self.mode != "generate" else (0, None)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        with torch.inference_mode():
            for batch in tqdm(batches, desc=f"scoring ({self.mode})", unit="batch", disable=not progress):
                if self.mode == "generate":
                    outputs = self._generate([encoded[i] for i in batch])
                    for i, text in zip(batch, outputs):
                        raw[i] = text
                        predictions[i] = parse_answer(text, self.builder.answers)
                        if predictions[i] != INVALID:
                            probabilities[i, predictions[i]] = 1.0
                        else:
                            probabilities[i] = 1.0 / len(self.label_ids)
                    continue
                preds, probs = self._score_batch([encoded[i] for i in batch], prefix_len, prefix)
                for row, i in enumerate(batch):
                    predictions[i], probabilities[i] = preds[row], probs[row]
        return ScoreResult(predictions, probabilities, self.mode, truncated, raw)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = self.model.device
        return ids.to(device), mask.to(device)

    def _shared_prefix(self, encoded: list[list[int]]) -> tuple[int, DynamicCache | None]:
        """The token prefix every prompt shares (template + instruction), run through the model once."""
        import torch
        from transformers import DynamicCache

        shortest = min(map(len, encoded))
        length = 0
        while length < shortest - 1 and all(e[length] == encoded[0][length] for e in encoded):
            length += 1
        if length < 4 or len(encoded) <= 1:
            return 0, None
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=torch.tensor([encoded[0][:length]], device=self.model.device), cache=cache, use_cache=True,
                   logits_to_keep=1)
        return length, cache

    def _batch_cache(self, prefix: DynamicCache | None, batch: int) -> DynamicCache:
        """A fresh cache for one batch holding the shared prefix (expanded views: appending copies them)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, layer in enumerate(prefix.layers if prefix is not None else []):
            cache.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), i)
        return cache

    def _score_batch(self, rows: list[list[int]], prefix_len: int = 0, prefix: DynamicCache | None = None,
                     ) -> tuple[list[int], np.ndarray]:
        """Prompts are [shared prefix][padding][own tokens]: positions skip the padding, the mask hides it."""
        import torch

        ids, own_mask = self._left_pad([r[prefix_len:] for r in rows])
        batch = len(rows)
        mask = torch.cat([own_mask.new_ones(batch, prefix_len), own_mask], dim=-1)
        positions = prefix_len + (own_mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._batch_cache(prefix, batch)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
        n_labels = len(self.label_ids)
        if self.mode == "first_token":
            firsts = torch.tensor([seq[0] for seq in self.label_ids], device=first.device)
            probs = torch.softmax(first[:, firsts], dim=-1).cpu().numpy()
            return probs.argmax(-1).tolist(), probs

        # Every label continuation at once: batch rows repeated per label, on copies of the prompt cache.
        width = max(map(len, self.label_ids))
        pad = self.tokenizer.pad_token_id or 0
        labels = torch.tensor([seq + [pad] * (width - len(seq)) for seq in self.label_ids], device=ids.device)  # [L, W]
        logp = torch.zeros(batch, n_labels, width, device=ids.device)
        logp[:, :, 0] = first[:, labels[:, 0]]
        if width > 1:
            cache.batch_repeat_interleave(n_labels)
            steps = labels[:, :-1].repeat(batch, 1)  # [B*L, W-1]
            step_mask = torch.cat([mask.repeat_interleave(n_labels, 0), torch.ones_like(steps)], dim=-1)
            step_pos = mask.sum(-1).repeat_interleave(n_labels, 0)[:, None] + torch.arange(width - 1, device=ids.device)
            logits = self.model(input_ids=steps, attention_mask=step_mask, position_ids=step_pos,
                                cache=cache, use_cache=True).logits
            step_logp = torch.log_softmax(logits.float(), dim=-1)  # [B*L, W-1, V]
            picked = step_logp.gather(-1, labels[:, 1:].repeat(batch, 1)[..., None])[..., 0]
            logp[:, :, 1:] = picked.view(batch, n_labels, width - 1)
        lengths = torch.tensor([len(s) for s in self.label_ids], device=ids.device)
        valid = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]  # [L, W]
        logp = logp.masked_fill(~valid, 0.0)
        if self.mode == "loglik":
            probs = torch.softmax(logp.sum(-1), dim=-1).cpu().numpy()
            return probs.argmax(-1).tolist(), probs
        return self._trie_readout(logp.cpu())

    def _trie_readout(self, logp: torch.Tensor) -> tuple[list[int], np.ndarray]:
        """Constrained-decoder probabilities (renormalised over trie children) and its greedy path."""
        import torch

        cond = torch.zeros_like(logp)
        for label, per_step in enumerate(self._siblings):
            for j, sibs in enumerate(per_step):
                cond[:, label, j] = logp[:, label, j] - torch.logsumexp(logp[:, sibs, j], dim=-1)
        probs = cond.sum(-1).exp().numpy()
        preds = []
        for row in logp:
            candidates, j = list(range(len(self.label_ids))), 0
            while len(candidates) > 1:
                live = [c for c in candidates if len(self.label_ids[c]) > j]
                best = max(live, key=lambda c: row[c, j].item())
                candidates = [c for c in live if self.label_ids[c][j] == self.label_ids[best][j]]
                j += 1
            preds.append(candidates[0])
        return preds, probs / probs.sum(-1, keepdims=True)

    def _generate(self, rows: list[list[int]]) -> list[str]:
        ids, mask = self._left_pad(rows)
        new = max(map(len, self.label_ids)) + 4
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def parse_answer(text: str, answers: list[str]) -> int:
    """Generate-and-parse baseline: the label the text starts with (case-insensitive), else INVALID."""
    cleaned = text.strip().strip(".\"'").lower()
    for i, answer in sorted(enumerate(answers), key=lambda p: -len(p[1])):
        if cleaned.startswith(answer.lower()):
            return i
    return INVALID
