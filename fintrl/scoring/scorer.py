"""Map a causal LM's output onto a label set: exactly, with a probability for every class.

Every label is verbalised as the token sequence the model would generate after the prompt (answer + end of
turn). Per batch the prompt is computed once (prefill); the token prefix that every prompt shares (chat template +
instruction) is computed once for the whole dataset and reused by every batch. Then:
- `trie`: constrained greedy decoding, what `generate` would say if it could only say a label, with the
  probabilities of that constrained decoder (each step renormalised over the trie's children). Only the trie's
  branching nodes need the model: one extra row per branching node below the root, whatever the label count;
- `loglik`: full-sequence log-likelihood of each label, softmax-normalised across labels (every label continuation
  at once, on copies of the prompt's KV cache);
- `first_token`: when labels start with distinct tokens the trie branches only at the root, so the prefill decides
  (the cheapest exact mode; `auto` picks it when it applies, else `trie`).
`generate` (free generation + parsing) is kept as a baseline only: it can say things that are not labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, get_args

import numpy as np

from fintrl import distributed
from fintrl.errors import ScoringError
from fintrl.metrics.classification import INVALID
from fintrl.model.label_tokens import LabelTokens, encode_prompt
from fintrl.model.peft_methods import virtual_cache, virtual_tokens
from fintrl.model.prefix import expand_cache, run_prefix
from fintrl.model.prompts import PromptBuilder
from fintrl.recipe.schema import EvalSection, ScoringMode

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODES = get_args(ScoringMode)


@dataclass
class ScoreResult:
    predictions: list[int]  # index into labels; INVALID only in `generate` mode
    probabilities: np.ndarray  # [n, n_labels], rows sum to 1
    mode: str
    n_truncated: int = 0
    raw_outputs: list[str] = field(default_factory=list)  # `generate` mode only
    truncated: list[bool] = field(default_factory=list)  # per text: cut to max_length (`n_truncated` counts them)

    @property
    def n_invalid(self) -> int:
        return sum(p == INVALID for p in self.predictions)

    @classmethod
    def concat(cls, parts: list[ScoreResult], mode: str, n_labels: int) -> ScoreResult:
        """Results of consecutive shards of texts, as one result in the texts' order."""
        return cls(
            predictions=[p for part in parts for p in part.predictions],
            probabilities=np.concatenate([np.zeros((0, n_labels)), *(part.probabilities for part in parts)]),
            mode=mode,
            n_truncated=sum(part.n_truncated for part in parts),
            raw_outputs=[r for part in parts for r in part.raw_outputs],
            truncated=[t for part in parts for t in part.truncated],
        )


class LabelScorer:
    """Scores texts against the prompt's labels. Build one with `LabelScorer.from_eval` (the recipe's `eval:`
    settings, or these); every command that scores (run, eval, predict, serve, Ray, compare, audit, export) does."""

    @classmethod
    def from_eval(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        builder: PromptBuilder,
        section: EvalSection,
        *,
        mode: str | None = None,
        batch_size: int | None = None,
        keep_prefix: bool = False,
    ) -> LabelScorer:
        """The scorer for a recipe's `eval:` section; `mode` and `batch_size` override it (`--mode`, a server's
        batch size). `keep_prefix`: the model's weights will not change, so the prompt's shared prefix is run once
        and kept for every later call (a server scoring one text per request skips it each time)."""
        return cls(
            model,
            tokenizer,
            builder,
            mode=mode or section.mode,
            batch_size=batch_size or section.batch_size,
            max_length=section.max_length,
            keep_prefix=keep_prefix,
        )

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        builder: PromptBuilder,
        mode: str = "auto",
        batch_size: int = 16,
        max_length: int = 512,
        keep_prefix: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ScoringError(f"scoring mode {mode!r}: expected one of {MODES}")
        self.model, self.tokenizer, self.builder = model, tokenizer, builder
        # Prompt learning: the scorer runs the base model after the adapter's virtual tokens (`_shared_prefix`)
        self._net = model.get_base_model() if virtual_tokens(model) else model
        self.batch_size, self.max_length = batch_size, max_length
        self.keep_prefix = keep_prefix
        self._kept: tuple[list[int], DynamicCache | None] | None = None  # (template prefix ids, its cache), once run
        self.label_tokens = LabelTokens.build(model, tokenizer, builder)
        self.label_ids = self.label_tokens.sequences
        distinct_first = self.label_tokens.distinct_first
        if mode == "first_token" and not distinct_first:
            raise ScoringError("first_token scoring needs labels that start with distinct tokens; use trie or loglik")
        self.mode = ("first_token" if distinct_first else "trie") if mode == "auto" else mode
        self._children = self.label_tokens.children
        self._branches = self.label_tokens.branches  # below the root: one extra row each

    # -- tokenisation -------------------------------------------------------------------------------------
    def _encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, self.builder, text)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Prompt ids per text; over-long texts are cut (tokens of the text, template kept) and counted."""
        encoded, truncated = self.encode_each(texts)
        return encoded, sum(truncated)

    def encode_each(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """As `encode`, with a flag per text instead of the count: True where that text was cut to max_length."""
        empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            raise ScoringError(f"{len(empty)} empty texts (first rows: {empty[:5]}); remove them before scoring")
        encoded, truncated = [], []
        for text in texts:
            ids = self._encode_prompt(text)
            truncated.append(len(ids) > self.max_length)
            if truncated[-1]:
                text_ids = self.tokenizer(text, add_special_tokens=False).input_ids
                keep = max(1, len(text_ids) - (len(ids) - self.max_length))
                ids = self._encode_prompt(self.tokenizer.decode(text_ids[:keep]))[: self.max_length]
            encoded.append(ids)
        if any(truncated):
            logger.warning(
                "%d of %d texts were longer than eval.max_length=%d tokens and were truncated",
                sum(truncated),
                len(texts),
                self.max_length,
            )
        return encoded, truncated

    # -- scoring ------------------------------------------------------------------------------------------
    def score_sharded(self, texts: list[str], progress: bool = True) -> ScoreResult:
        """`score(texts)`, each process of a launch scoring a contiguous shard, every process getting every result in
        the texts' order (`distributed.split_and_gather`). One process: `score(texts)` itself."""

        def part(shard: list[str]) -> ScoreResult:
            if not shard:  # fewer texts than processes
                return ScoreResult([], np.zeros((0, len(self.label_ids))), self.mode)
            return self.score(shard, progress=progress and distributed.is_main())

        parts = distributed.split_and_gather(list(texts), part)
        result = ScoreResult.concat(parts, self.mode, len(self.label_ids))
        if len(result.predictions) != len(texts):
            raise RuntimeError(f"gathered {len(result.predictions)} scores for {len(texts)} texts")
        return result

    def score(self, texts: list[str], progress: bool = True) -> ScoreResult:
        import torch
        from tqdm.auto import tqdm

        encoded, truncated = self.encode_each(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # length-sorted: little padding
        predictions = [INVALID] * len(texts)
        probabilities = np.zeros((len(texts), len(self.label_ids)))
        raw = [""] * len(texts) if self.mode == "generate" else []
        if self.model.training:  # eval() walks every module: a few ms a call, a server's every request
            self.model.eval()
        with torch.inference_mode():
            prefix_len, prefix = self._shared_prefix(encoded) if self.mode != "generate" else (0, None)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
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
        return ScoreResult(predictions, probabilities, self.mode, sum(truncated), raw, truncated)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = self.model.device
        return ids.to(device), mask.to(device)

    def _shared_prefix(self, encoded: list[list[int]]) -> tuple[int, DynamicCache | None]:
        """The token prefix every prompt shares (template + instruction), run through the model once; after a
        prompt-learning adapter's virtual tokens, which the cache then holds first (as PEFT's forward has them).
        With `keep_prefix`, the template's own prefix is run once for the scorer's life and reused wherever every
        prompt starts with exactly its tokens (else this batch's is run, as without it)."""
        import torch

        if self.keep_prefix:
            if self._kept is None:
                self._kept = self._template_prefix()
            ids, cache = self._kept
            if len(ids) >= 4 and all(len(e) > len(ids) and e[: len(ids)] == ids for e in encoded):
                return len(ids), cache
        start = virtual_cache(self.model)
        shortest = min(map(len, encoded))
        length = 0
        while length < shortest - 1 and all(e[length] == encoded[0][length] for e in encoded):
            length += 1
        if length < 4 or len(encoded) <= 1:
            return 0, start
        ids = torch.tensor([encoded[0][:length]], device=self.model.device)
        return length, run_prefix(self._net, ids, self.model.config, cache=start, logits_to_keep=1)

    def _template_prefix(self) -> tuple[list[int], DynamicCache | None]:
        """The tokens every prompt starts with whatever its text (those two unlike texts share), and their cache."""
        import torch

        probes = [self._encode_prompt(text) for text in ("x", "7 Q")]
        length = 0
        while length < min(map(len, probes)) - 1 and probes[0][length] == probes[1][length]:
            length += 1
        ids = probes[0][:length]
        start = virtual_cache(self.model)
        if length < 4:
            return ids, start
        prefix = torch.tensor([ids], device=self.model.device)
        return ids, run_prefix(self._net, prefix, self.model.config, cache=start, logits_to_keep=1)

    def _score_batch(
        self,
        rows: list[list[int]],
        prefix_len: int = 0,
        prefix: DynamicCache | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """Prompts are [virtual tokens][shared prefix][padding][own tokens]: positions skip the padding, the mask hides
        it. `prefix` caches the first two (`prefix_len` is the shared prompt tokens alone)."""
        import torch

        ids, own_mask = self._left_pad([r[prefix_len:] for r in rows])
        batch = len(rows)
        cached = prefix.get_seq_length() if prefix is not None else 0
        mask = torch.cat([own_mask.new_ones(batch, cached), own_mask], dim=-1)
        positions = cached + (own_mask.cumsum(-1) - 1).clamp(min=0)
        cache = expand_cache(prefix, batch, self.model.config)
        out = self._net(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
        n_labels = len(self.label_ids)
        if self.mode == "first_token":
            firsts = torch.tensor([seq[0] for seq in self.label_ids], device=first.device)
            probs = torch.softmax(first[:, firsts], dim=-1).cpu().numpy()
            return probs.argmax(-1).tolist(), probs

        if self.mode == "trie":
            node_logp = {(): first}
            if self._branches:
                logits = self._extend(cache, mask, [list(node) for node in self._branches])  # [B, K, W, V]
                depth = torch.tensor([len(node) - 1 for node in self._branches], device=ids.device)
                at_node = logits[:, torch.arange(len(self._branches), device=ids.device), depth]  # [B, K, V]
                node_logp |= dict(zip(self._branches, torch.log_softmax(at_node.float(), -1).unbind(1)))
            return self._trie_readout(node_logp)

        # loglik: every label continuation at once, on copies of the prompt cache.
        width = max(map(len, self.label_ids))
        logp = torch.zeros(batch, n_labels, width, device=ids.device)
        logp[:, :, 0] = first[:, [seq[0] for seq in self.label_ids]]
        if width > 1:
            step_logp = torch.log_softmax(self._extend(cache, mask, [seq[:-1] for seq in self.label_ids]).float(), -1)
            for label, seq in enumerate(self.label_ids):
                targets = torch.tensor(seq[1:], device=ids.device)
                logp[:, label, 1 : len(seq)] = step_logp[:, label, torch.arange(len(seq) - 1), targets]
        probs = torch.softmax(logp.sum(-1), dim=-1).cpu().numpy()
        return probs.argmax(-1).tolist(), probs

    def _extend(self, cache: DynamicCache, mask: torch.Tensor, paths: list[list[int]]) -> torch.Tensor:
        """Logits of K token paths continuing every prompt of the batch: [B, K, W, V] (paths right-padded to W)."""
        import torch

        batch, k = mask.shape[0], len(paths)
        width = max(1, max(map(len, paths)))
        pad = self.tokenizer.pad_token_id or 0
        steps = torch.tensor([p + [pad] * (width - len(p)) for p in paths], device=mask.device).repeat(batch, 1)
        cache.batch_repeat_interleave(k)
        step_mask = torch.cat([mask.repeat_interleave(k, 0), torch.ones_like(steps)], dim=-1)
        step_pos = mask.sum(-1).repeat_interleave(k, 0)[:, None] + torch.arange(width, device=mask.device)
        logits = self._net(
            input_ids=steps, attention_mask=step_mask, position_ids=step_pos, cache=cache, use_cache=True
        ).logits
        return logits.view(batch, k, width, -1)

    def _trie_readout(self, node_logp: dict[tuple[int, ...], torch.Tensor]) -> tuple[list[int], np.ndarray]:
        """Constrained-decoder probabilities (each branching step renormalised over the trie's children) and
        its greedy path; single-child steps are forced, probability 1."""
        import torch

        batch = node_logp[()].shape[0]
        logprob = torch.zeros(batch, len(self.label_ids))
        for label, seq in enumerate(self.label_ids):
            for j, token in enumerate(seq):
                node = tuple(seq[:j])
                kids = self._children[node]
                if len(kids) > 1:
                    logprob[:, label] += (
                        node_logp[node][:, token] - torch.logsumexp(node_logp[node][:, kids], -1)
                    ).cpu()
        index = self.label_tokens.index()
        preds = []
        for b in range(batch):
            node: tuple[int, ...] = ()
            while node not in index:
                kids = self._children[node]
                node += (kids[int(node_logp[node][b, kids].argmax())] if len(kids) > 1 else kids[0],)
            preds.append(index[node])
        probs = logprob.exp().numpy()
        return preds, probs / probs.sum(-1, keepdims=True)

    def _generate(self, rows: list[list[int]]) -> list[str]:
        ids, mask = self._left_pad(rows)
        new = max(map(len, self.label_ids)) + 4
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


def parse_answer(text: str, answers: list[str]) -> int:
    """Generate-and-parse baseline: the label the text starts with (case-insensitive), else INVALID."""
    cleaned = text.strip().strip(".\"'").lower()
    for i, answer in sorted(enumerate(answers), key=lambda p: -len(p[1])):
        if cleaned.startswith(answer.lower()):
            return i
    return INVALID
