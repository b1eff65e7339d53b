"""The qualification conversation as tables: a lead's replies, in order -> what the bot asks or how it
ends. Run over base.qualification's real questions (company size, budget, needs; threshold 2), in
Russian and English, with the state passed through its stored (JSON) form between replies as the bot
will between Telegram updates."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from app.automations.qualification import (
    Ask,
    Button,
    Finished,
    Language,
    QualificationState,
    answer,
    start,
)
from funnel_templates.automations import QualificationSpec
from funnel_templates.loader import library


def bot_spec(key: str) -> QualificationSpec:
    spec = library()[key].qualification
    assert spec is not None, key
    return spec


SPEC = bot_spec("base.qualification")

HINT_SIZE_RU = "Пожалуйста, выберите один из вариантов: До 10, От 11 до 100, Более 100."
HINT_SIZE_EN = "Please choose one of the options: Up to 10, 11 to 100, Over 100."


def converse(replies: list[str], language: Language = "ru", spec: QualificationSpec = SPEC) -> Ask | Finished:
    """Feed the replies one by one, storing and reloading the state in between."""
    step: Ask | Finished = start(spec, language)
    for reply in replies:
        assert isinstance(step, Ask), f"the conversation ended before {reply!r}"
        stored = json.loads(json.dumps(step.state.to_dict()))
        step = answer(spec, QualificationState.from_dict(stored), reply)
    return step


def test_start_asks_the_first_question_with_its_options_as_buttons() -> None:
    first = start(SPEC, "ru")
    assert (first.question_code, first.text, first.hint) == (
        "company_size",
        "Сколько сотрудников в вашей компании?",
        None,
    )
    assert first.buttons == [Button("up_to_10", "До 10"), Button("up_to_100", "От 11 до 100"),
                             Button("over_100", "Более 100")]  # fmt: skip
    assert start(SPEC, "en").text == "How many employees does your company have?"


@dataclass(frozen=True)
class AskCase:
    id: str
    replies: list[str]
    question: str
    hint: str | None = None
    language: Language = "ru"


ASK_CASES = [
    AskCase("a-button-moves-to-the-next-question", ["over_100"], "budget"),
    AskCase("the-option-name-typed-in-any-case-fits", ["более 100"], "budget"),
    AskCase("the-other-languages-name-fits-too", ["Over 100"], "budget"),
    AskCase("the-code-in-capitals-fits", ["  UP_TO_10 "], "budget"),
    AskCase("an-answer-that-is-no-option-re-asks-with-a-hint", ["пятьдесят"], "company_size", HINT_SIZE_RU),
    AskCase("the-hint-is-in-the-conversations-language", ["fifty"], "company_size", HINT_SIZE_EN, "en"),
    AskCase("a-re-asked-question-accepts-a-fitting-answer-next", ["fifty", "up_to_100"], "budget", None, "en"),
    AskCase("a-free-text-question-has-no-buttons", ["over_100", "over_100k"], "needs"),
    AskCase("a-blank-free-text-answer-re-asks", ["over_100", "over_100k", "   "], "needs",
            "Пожалуйста, напишите ответ сообщением."),
]  # fmt: skip


@pytest.mark.parametrize("case", ASK_CASES, ids=[c.id for c in ASK_CASES])
def test_asks(case: AskCase) -> None:
    step = converse(case.replies, case.language)
    assert isinstance(step, Ask)
    assert (step.question_code, step.hint) == (case.question, case.hint)
    question = next(q for q in SPEC.questions if q.code == case.question)
    assert [b.code for b in step.buttons] == [o.code for o in question.options]


@dataclass(frozen=True)
class EndCase:
    id: str
    replies: list[str]
    score: int
    stage: str
    fields: dict[str, str]
    labels: dict[str, str]
    language: Language = "ru"


NEED = "Автоматизировать продажи"
END_CASES = [
    EndCase("top-answers-qualify", ["over_100", "over_100k", NEED], 4, "SEGMENTATION",
            {"company_size": "over_100", "budget_range": "over_100k", "needs": NEED},
            {"company_size": "Более 100", "budget_range": "Более 100 000 ₽", "needs": NEED}),
    EndCase("exactly-the-threshold-qualifies", ["up_to_100", "under_100k", NEED], 2, "SEGMENTATION",
            {"company_size": "up_to_100", "budget_range": "under_100k", "needs": NEED},
            {"company_size": "От 11 до 100", "budget_range": "До 100 000 ₽", "needs": NEED}),
    EndCase("below-the-threshold-is-rejected", ["up_to_10", "under_100k", NEED], 1, "LOST",
            {"company_size": "up_to_10", "budget_range": "under_100k", "needs": NEED},
            {"company_size": "До 10", "budget_range": "До 100 000 ₽", "needs": NEED}),
    EndCase("a-wrong-answer-on-the-way-does-not-count", ["up_to_10", "lots", "Бюджета пока нет", " CRM "], 0, "LOST",
            {"company_size": "up_to_10", "budget_range": "none", "needs": "CRM"},
            {"company_size": "До 10", "budget_range": "Бюджета пока нет", "needs": "CRM"}),
    EndCase("english-labels", ["Over 100", "up to 100,000 rub", "CRM"], 3, "SEGMENTATION",
            {"company_size": "over_100", "budget_range": "under_100k", "needs": "CRM"},
            {"company_size": "Over 100", "budget_range": "Up to 100,000 RUB", "needs": "CRM"}, "en"),
]  # fmt: skip


@pytest.mark.parametrize("case", END_CASES, ids=[c.id for c in END_CASES])
def test_ends(case: EndCase) -> None:
    step = converse(case.replies, case.language)
    assert step == Finished(case.score, case.fields, case.labels, case.stage, case.score >= SPEC.threshold)


def test_answering_after_the_end_is_refused() -> None:
    last = converse(["over_100", "over_100k"])
    assert isinstance(last, Ask)
    done = QualificationState("ru", {**last.state.answers, "needs": NEED})
    with pytest.raises(ValueError, match="over"):
        answer(SPEC, done, "ещё")


@pytest.mark.parametrize(
    "stored",
    [{"language": "de", "answers": {}}, {"language": "ru"}, {"language": "ru", "answers": {"budget": 5}},
     {"language": "ru", "answers": ["budget"]}],
    ids=["unknown-language", "no-answers", "answer-not-text", "answers-not-a-mapping"],
)  # fmt: skip
def test_a_stored_state_that_is_not_one_is_refused(stored: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QualificationState.from_dict(stored)


def test_an_unknown_language_is_refused_at_the_start() -> None:
    with pytest.raises(ValueError, match="language"):
        start(SPEC, "de")  # type: ignore[arg-type]


def test_the_by_goal_bot_ends_in_its_own_stages() -> None:
    spec = bot_spec("by_goal.qualification")
    best = [max(q.options, key=lambda o: o.score).code if q.options else "text" for q in spec.questions]
    worst = [min(q.options, key=lambda o: o.score).code if q.options else "text" for q in spec.questions]
    top, bottom = converse(best, spec=spec), converse(worst, spec=spec)
    assert isinstance(top, Finished) and isinstance(bottom, Finished)
    assert (top.score, top.stage) == (spec.max_score(), spec.qualified_stage)
    assert bottom.stage == spec.rejected_stage
