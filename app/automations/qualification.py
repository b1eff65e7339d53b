"""The Telegram qualification bot's conversation as a pure state machine over a QualificationSpec.

`start` asks the first question; `answer` takes the lead's reply (a button's option code or typed
text) and asks the next one, re-asks with a hint when the reply does not fit, or ends with the score,
the field values to write and the stage the deal goes to. The state between replies is a small
JSON-ready dict (`QualificationState.to_dict`), stored between Telegram updates. It holds the answers
by question code, so the next question is found again from the spec rather than from an index that a
changed template would shift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from funnel_templates.automations import QualificationOption, QualificationQuestion, QualificationSpec

Language = Literal["ru", "en"]
LANGUAGES: tuple[Language, ...] = get_args(Language)

_CHOOSE_HINT = {
    "ru": "Пожалуйста, выберите один из вариантов: {options}.",
    "en": "Please choose one of the options: {options}.",
}
_TYPE_HINT = {
    "ru": "Пожалуйста, напишите ответ сообщением.",
    "en": "Please type your answer in a message.",
}


@dataclass(frozen=True)
class QualificationState:
    language: Language
    answers: dict[str, str] = field(default_factory=dict)  # question code -> option code / free text

    def to_dict(self) -> dict[str, Any]:
        return {"language": self.language, "answers": dict(self.answers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualificationState:
        """The stored state; ValueError when it is not one (a corrupt or foreign record)."""
        language, answers = data.get("language"), data.get("answers")
        if language not in LANGUAGES:
            raise ValueError(f"unknown conversation language {language!r}")
        if not isinstance(answers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in answers.items()
        ):
            raise ValueError("conversation answers must map question codes to text")
        return cls(language, dict(answers))


@dataclass(frozen=True)
class Button:
    code: str  # what the button sends back (Telegram callback data)
    label: str


@dataclass(frozen=True)
class Ask:
    """The next question to send; `hint` is set when the previous reply did not fit it."""

    state: QualificationState
    question_code: str
    text: str
    buttons: list[Button]
    hint: str | None = None


@dataclass(frozen=True)
class Finished:
    score: int
    fields: dict[str, str]  # the question's field -> the option code, or the typed text
    labels: dict[str, str]  # the question's field -> the chosen option's name, or the typed text
    stage: str  # qualified_stage when score >= threshold, else rejected_stage
    qualified: bool


def start(spec: QualificationSpec, language: Language) -> Ask:
    if language not in LANGUAGES:
        raise ValueError(f"unknown conversation language {language!r}")
    return _ask(spec.questions[0], QualificationState(language))


def answer(spec: QualificationSpec, state: QualificationState, reply: str) -> Ask | Finished:
    """Record `reply` to the current question and move on; a reply that does not fit re-asks."""
    question = current_question(spec, state)
    if question is None:
        raise ValueError("the conversation is over: every question is answered")
    value = _accept(question, reply)
    if value is None:
        return _ask(question, state, hint=_hint(question, state.language))
    state = QualificationState(state.language, {**state.answers, question.code: value})
    following = current_question(spec, state)
    return _finish(spec, state) if following is None else _ask(following, state)


def current_question(spec: QualificationSpec, state: QualificationState) -> QualificationQuestion | None:
    return next((q for q in spec.questions if q.code not in state.answers), None)


def _ask(question: QualificationQuestion, state: QualificationState, hint: str | None = None) -> Ask:
    language = state.language
    buttons = [Button(o.code, _name(o, language)) for o in question.options]
    return Ask(state, question.code, _text(question, language), buttons, hint)


def _accept(question: QualificationQuestion, reply: str) -> str | None:
    """The value an answer records: the option matching the reply by code or by its name in either
    language (case-insensitive), or the typed text for a question without options; None when the
    reply fits neither."""
    typed = reply.strip()
    if not question.options:
        return typed or None
    wanted = typed.casefold()
    for option in question.options:
        if wanted in {option.code.casefold(), option.name.ru.casefold(), option.name.en.casefold()}:
            return option.code
    return None


def _hint(question: QualificationQuestion, language: Language) -> str:
    if not question.options:
        return _TYPE_HINT[language]
    names = ", ".join(_name(o, language) for o in question.options)
    return _CHOOSE_HINT[language].format(options=names)


def _finish(spec: QualificationSpec, state: QualificationState) -> Finished:
    score = 0
    fields: dict[str, str] = {}
    labels: dict[str, str] = {}
    for question in spec.questions:
        value = state.answers[question.code]
        option = next((o for o in question.options if o.code == value), None)
        score += option.score if option else 0  # a typed answer scores nothing
        fields[question.field] = value
        labels[question.field] = _name(option, state.language) if option else value
    qualified = score >= spec.threshold
    stage = spec.qualified_stage if qualified else spec.rejected_stage
    return Finished(score, fields, labels, stage, qualified)


def _name(option: QualificationOption, language: Language) -> str:
    return option.name.ru if language == "ru" else option.name.en


def _text(question: QualificationQuestion, language: Language) -> str:
    return question.text.ru if language == "ru" else question.text.en
