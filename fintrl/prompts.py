"""Labels <-> instruction prompts <-> answers: the one place that says what the model is asked and what it answers,
used by training, scoring and the model card alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fintrl.errors import RecipeError
from fintrl.recipe import PromptSection

if TYPE_CHECKING:
    from datasets import Dataset


class PromptBuilder:
    """Turns a text into chat messages and a label into the answer the model learns to give."""

    def __init__(self, prompt: PromptSection, labels: list[str], task: str | None = None) -> None:
        self.prompt = prompt
        self.labels = labels
        verbalizers = prompt.verbalizers or {}
        unknown = set(verbalizers) - set(labels)
        if unknown:
            raise RecipeError(f"prompt.verbalizers: {sorted(unknown)} are not labels {labels}")
        self.answers = [verbalizers.get(name, name) for name in labels]
        if len(set(self.answers)) != len(self.answers) or not all(a.strip() for a in self.answers):
            raise RecipeError(f"prompt.verbalizers: answers must be distinct and non-empty, got {self.answers}")
        self.task = prompt.task if "task" in prompt.model_fields_set or task is None else task
        try:
            self.instruction = prompt.instruction.format(task=self.task, labels=", ".join(self.answers))
        except (KeyError, IndexError) as err:
            raise RecipeError(f"prompt.instruction: unknown placeholder {err}; use {{task}} and {{labels}}") from None

    def messages(self, text: str) -> list[dict[str, str]]:
        user = self.prompt.template.format(instruction=self.instruction, text=text)
        system = [{"role": "system", "content": self.prompt.system}] if self.prompt.system else []
        return [*system, {"role": "user", "content": user}]

    def example(self, text: str, label: int) -> dict[str, list[dict[str, str]]]:
        """A conversational prompt-completion example: TRL puts the loss on the completion only."""
        return {"prompt": self.messages(text), "completion": [{"role": "assistant", "content": self.answers[label]}]}

    def sft_dataset(self, ds: Dataset) -> Dataset:
        return ds.map(lambda row: self.example(row["text"], row["label"]), remove_columns=ds.column_names)
