"""Labels <-> instruction prompts <-> answers: the one place that says what the model is asked and what it answers.

A `PromptBuilder` is the *resolved* prompt: the task, the instruction with its placeholders filled, the user-message
template, the system prompt and one answer per label. A run resolves it once from its recipe and its data
(`PromptBuilder.resolve`) and stores it in the run folder (`prompt.json`); every later step (eval, predict, serve,
Ray, compare, audit, export, the card) rebuilds that very prompt from the record (`PromptBuilder.from_record`), so an
adapter is always asked what it was trained on. Those two class methods are its only constructors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fintrl.data.presets import DEFAULT_TASK
from fintrl.errors import RecipeError
from fintrl.recipe.placeholders import INSTRUCTION_FIELDS, TEMPLATE_FIELDS, placeholder_problems

if TYPE_CHECKING:
    from datasets import Dataset

    from fintrl.recipe.schema import PromptSection


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RecipeError(message)


@dataclass(frozen=True)
class PromptBuilder:
    """Turns a text into chat messages and a label into the answer the model learns to give."""

    labels: list[str]
    answers: list[str]  # per label: the text the model answers (the label, or its verbalizer)
    task: str
    instruction: str  # with {task} and {labels} filled in
    template: str  # the user message: {instruction} and {text}
    system: str | None = None

    def __post_init__(self) -> None:
        where = "prompt"
        _require(len(self.labels) >= 2 and len(self.answers) == len(self.labels), f"{where}: one answer per label")
        _require(
            len(set(self.answers)) == len(self.answers) and all(a.strip() for a in self.answers),
            f"prompt.verbalizers: answers must be distinct and non-empty, got {self.answers}",
        )
        problems = placeholder_problems("prompt.template", self.template, TEMPLATE_FIELDS)
        _require(not problems, "; ".join(problems))

    @classmethod
    def resolve(cls, section: PromptSection, labels: list[str], data_task: str | None = None) -> PromptBuilder:
        """The prompt a run trains with: the recipe's prompt section over the data's labels; `{task}` is the recipe's
        `prompt.task`, else the data's task (`fintrl.data.presets.data_task`).

        >>> from fintrl.recipe.schema import PromptSection
        >>> PromptBuilder.resolve(PromptSection(), ["bearish", "bullish"], "topic").instruction
        'Classify the topic of this financial text. Answer with one of: bearish, bullish.'
        """
        verbalizers = section.verbalizers or {}
        unknown = set(verbalizers) - set(labels)
        if unknown:
            raise RecipeError(f"prompt.verbalizers: {sorted(unknown)} are not labels {labels}")
        answers = [verbalizers.get(name, name) for name in labels]
        task = section.task or data_task or DEFAULT_TASK
        problems = placeholder_problems("prompt.instruction", section.instruction, INSTRUCTION_FIELDS)
        _require(not problems, "; ".join(problems))
        instruction = section.instruction.format(task=task, labels=", ".join(answers))
        return cls(list(labels), answers, task, instruction, section.template, section.system)

    @classmethod
    def from_record(cls, record: Any, where: str) -> PromptBuilder:
        """A stored prompt (`record()`), validated as strictly as a recipe: `where` names the file in every error."""
        fields = ("labels", "answers", "task", "instruction", "template", "system")
        if not isinstance(record, dict) or set(record) - set(fields) or not set(fields[:5]) <= set(record):
            raise RecipeError(f"{where}: not a fintrl prompt record (expected the fields {', '.join(fields)})")
        for key in fields:
            value = record.get(key)
            if key in ("labels", "answers"):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = isinstance(value, str) or (key == "system" and value is None)
            kind = "a list of strings" if key in ("labels", "answers") else "a string"
            _require(ok, f"{where}: {key} must be {kind}")
        try:
            return cls(**{key: record.get(key) for key in fields})
        except RecipeError as err:
            raise RecipeError(f"{where}: {err}") from None

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def user_message(self, text: str) -> str:
        return self.template.format(instruction=self.instruction, text=text)

    def messages(self, text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user_message(text)}]

    def example(self, text: str, label: int) -> dict[str, list[dict[str, str]]]:
        """A conversational prompt-completion example: TRL puts the loss on the completion only."""
        return {"prompt": self.messages(text), "completion": [{"role": "assistant", "content": self.answers[label]}]}

    def sft_dataset(self, ds: Dataset) -> Dataset:
        return ds.map(lambda row: self.example(row["text"], row["label"]), remove_columns=ds.column_names)
