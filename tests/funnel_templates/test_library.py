"""Every funnel in the seeds is in the library, with the seed's exact stage names in seed order."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from pathlib import Path

import pytest

from funnel_templates.loader import LIBRARY_DIR, library
from funnel_templates.schema import FunnelTemplate
from tests.funnel_templates import seed_stages

REPO = Path(__file__).resolve().parents[2]
SEEDS_DIR = Path(os.environ.get("FUNNELSYNC_SEEDS_DIR", REPO.parent / "shared" / "seeds"))

NICHE_FUNNELS = {
    "retail": ["online_store", "offline_store", "large_goods"],
    "wholesale": ["standard_orders", "regular_supplies", "corporate_clients"],
    "production": [
        "furniture_sales", "furniture_manufacturing", "furniture_shipping",
        "materials_sales", "materials_manufacturing", "materials_shipping",
    ],
    "logistics": ["international", "regional", "warehouse"],
    "auto_service": ["maintenance", "repair", "regular_clients"],
    "medical": ["new_clients", "regular_clients"],
    "dentistry": ["new_clients", "regular_clients"],
    "real_estate": ["buyers", "sellers", "rent"],
    "education": ["online_courses", "corporate_training", "repeat_sales"],
    "legal": ["consulting", "business_clients", "real_estate"],
    "construction": ["houses", "renovation", "landscape"],
    "hotel": ["booking", "corporate", "loyalty"],
    "sports": ["new_members", "renewals", "events"],
}  # fmt: skip
BASE_TYPES = ["qualification", "new_sales", "active_clients", "win_back", "cold", "production", "feedback"]
BY_GOAL = ["qualification", "pre_sales", "active_base", "order_processing", "post_sales"]

EXPECTED_KEYS = (
    {f"{niche}.{funnel}" for niche, funnels in NICHE_FUNNELS.items() for funnel in funnels}
    | {f"base.{k}" for k in BASE_TYPES}
    | {f"by_goal.{k}" for k in BY_GOAL}
    | {"general.typical"}
)


def _seed_tables() -> dict[str, tuple[list[str], str]]:
    """key -> (seed stage names, seed file) from every module in tests/funnel_templates/seed_stages."""
    table: dict[str, tuple[list[str], str]] = {}
    for info in pkgutil.iter_modules(seed_stages.__path__):
        module = importlib.import_module(f"{seed_stages.__name__}.{info.name}")
        files: dict[str, str] = getattr(module, "SEED_FILES", {})
        for key, names in module.SEED_STAGES.items():
            table[key] = (names, files.get(key) or module.SEED_FILE)
    return table


SEED_TABLE = _seed_tables()
SOURCE_COMMENT = re.compile(r"^# source: (\S+)", re.MULTILINE)


def _library_files() -> dict[str, Path]:
    return {
        re.search(r"^key: (\S+)", path.read_text(encoding="utf-8"), re.MULTILINE).group(1): path  # type: ignore[union-attr]
        for path in LIBRARY_DIR.rglob("*.yaml")
    }


LIBRARY_FILES = _library_files()


def seed_file(key: str) -> str:
    """The article a shipped template comes from: a YAML comment, as users never see it."""
    found = SOURCE_COMMENT.search(LIBRARY_FILES[key].read_text(encoding="utf-8"))
    assert found, f"{key}: no '# source: <article file>' comment"
    return found.group(1)


def test_the_library_holds_every_seed_funnel() -> None:
    assert len(EXPECTED_KEYS) == 53
    missing = EXPECTED_KEYS - set(library())
    assert not missing, f"missing templates: {sorted(missing)}"


def test_every_template_has_a_seed_stage_list() -> None:
    assert set(SEED_TABLE) | {"general.typical"} >= EXPECTED_KEYS


@pytest.mark.parametrize("key", sorted(EXPECTED_KEYS - {"general.typical"}))
def test_seed_stages_in_seed_order(key: str) -> None:
    template = library()[key]
    expected, source = SEED_TABLE[key]
    listed = [s.name.ru for s in template.stages if not s.derived]
    assert listed == expected
    assert seed_file(key) == source
    if not expected:  # funnels whose seed gives no stage list: every stage is derived
        assert all(s.derived for s in template.stages)


@pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason=f"seed articles not found at {SEEDS_DIR}")
@pytest.mark.parametrize("key", sorted(EXPECTED_KEYS))
def test_stage_names_appear_verbatim_in_the_seed(key: str) -> None:
    template = library()[key]
    text = (SEEDS_DIR / seed_file(key)).read_text(encoding="utf-8")
    for stage in template.stages:
        if not stage.derived:
            assert stage.name.ru.split(" (")[0] in text, f"{key}: {stage.name.ru!r} not in {seed_file(key)}"


def _typical() -> FunnelTemplate:
    return library()["general.typical"]


def test_typical_funnel_stages_and_rules() -> None:
    typical = _typical()
    assert [s.name.ru for s in typical.stages] == [
        "Лиды",
        "Новая заявка",
        "Квалификация пройдена",
        "Отложенная заявка",
        "Презентация проведена / Предложение отправлено",
        "Условия работы (покупки) согласованы, договор подписан",
        "Товар отгружен / Услуга оказана (Акты, накладные подписаны)",
        "Оплата получена",
        "Отзыв / Рекомендация получены",
        "Сделка закрыта (Успешная сделка)",
        "Отказ (Причины отказа)",
    ]
    new = typical.stage("NEW_REQUEST")
    assert new.sla is not None and new.sla.within.total_seconds() == 120 and not new.sla.derived
    deferred = typical.stage("DEFERRED")
    assert [r.field for r in deferred.required_fields] == ["next_contact_at"]
    assert deferred.follow_up is not None and deferred.follow_up.field == "next_contact_at"
    assert {f.code: f.type for f in typical.fields}["next_contact_at"] == "datetime"
    won, lost = typical.stages[-2], typical.stages[-1]
    assert won.semantics == "success" and lost.semantics == "failure"
    assert [r.field for r in lost.required_fields] == ["loss_reason"]
    assert [r.name.ru for r in typical.loss_reasons] == [
        "Спам",
        "Купил у конкурента",
        "Передумал покупать (отпала необходимость, выбрал другой способ решения своей задачи)",
        "Не устроили сроки или порядок выполнения работ (порядок отгрузки и тд)",
        "Сравнивал (анализировал), не собирался покупать",
    ]
    assert not any(r.derived for r in typical.loss_reasons)


def test_every_stage_has_a_temperature_and_english_name() -> None:
    for template in library().values():
        for stage in template.stages:
            assert stage.temperature in ("cold", "warm", "hot")
            assert stage.name.en and stage.name.en != stage.name.ru, (template.key, stage.code)


def test_every_template_states_its_seed_in_a_comment() -> None:
    seeds = {p.name for p in SEEDS_DIR.glob("*.txt")} if SEEDS_DIR.is_dir() else None
    assert set(LIBRARY_FILES) == set(library())
    for key in library():
        assert seed_file(key).endswith(".txt")
        if seeds is not None:
            assert seed_file(key) in seeds, key


# What users must never read: the seed's line numbers, article file names, notes about the seed.
PROVENANCE = re.compile(r"(?i)\bseed\b|\.txt\b|\blines? \d|\barticle")


def _texts(node: object, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in _texts(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _texts(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


@pytest.mark.parametrize("key", sorted(EXPECTED_KEYS))
def test_users_see_a_clean_description_and_no_provenance(key: str) -> None:
    template = library()[key]
    assert template.source is None and template.notes == []
    assert template.description is not None and template.description.ru and template.description.en
    leaks = [
        (path, text) for path, text in _texts(template.model_dump(mode="json")) if PROVENANCE.search(text)
    ]
    assert leaks == []
    # ...while the provenance stays in the file, seed line numbers included, for template authors.
    assert re.search(
        r"^# .*\bSeed lines? \d", LIBRARY_FILES[key].read_text(encoding="utf-8"), re.MULTILINE
    ) or (key.startswith(("base.", "by_goal.", "general.")))


MIXED_SCRIPT = re.compile(r"[\u0400-\u04ff][A-Za-z]|[A-Za-z][\u0400-\u04ff]")


def test_no_word_mixes_cyrillic_and_latin_letters() -> None:
    """Catches look-alike typos (a Latin 'a' in a Russian word) that break search and matching."""
    for template in library().values():
        texts = (
            [template.name.ru]
            + [s.name.ru for s in template.stages]
            + [r.name.ru for r in template.loss_reasons]
        )
        for text in texts:
            assert not MIXED_SCRIPT.search(text), (template.key, text)
