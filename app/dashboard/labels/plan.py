"""The provisioning plan's lines and reasons (app/funnels/plan.py PLAN_TEXTS) in Russian, its item
kinds, changed attributes and field types. The English is the plan's own, so the CLI, the JSON and
the dashboard's English say the same."""

from __future__ import annotations

from app.funnels.plan import PLAN_TEXTS

_RUSSIAN: dict[str, str] = {
    "plan_pipeline_new": "воронка «{name}»",
    "plan_pipeline": "воронка {id}",
    "plan_pipeline_adopted": "найдена по названию и взята под управление",
    "plan_stage_new": "стадия «{name}» ({semantics})",
    "plan_stage_new_reused": "стадия «{name}» ({semantics}) (используется своя стадия CRM для успеха/провала)",
    "plan_stage_mapped": "стадия «{name}» → {id}",
    "plan_stage_reuses_default": "используется стадия, которую CRM создала вместе с воронкой",
    "plan_stage_crm": "стадия «{name}» ({id})",
    "plan_stage_crm_own": "собственная стадия CRM; остаётся как есть",
    "plan_stage_holds_deals": "её больше нет в шаблоне, но в ней сделок: {deals}; перенесите их и запустите снова",
    "plan_stage_not_in_template": "её больше нет в шаблоне",
    "plan_stage_default_unused": "стадия по умолчанию, которую шаблон не использует",
    "plan_stage_by_hand": "добавлена в CRM вручную; не трогаем",
    "plan_field_new": "поле «{name}» ({type})",
    "plan_field_mapped": "поле «{name}» → {crm_name}",
    "plan_field_options_missing": (
        "в CRM нет вариантов: {options}; добавьте их в поле в CRM (FunnelSync не меняет существующие поля)"
    ),
    "plan_requirement": "«{field}» обязательно на стадиях {stages}",
    "plan_loss_reason_new": "причина отказа «{name}»",
    "plan_loss_reason_mapped": "причина отказа «{name}» → {id}",
    "plan_webhook": "вебхук {url}",
    "plan_webhook_events": "вебхук {url} ({events})",
    "plan_webhook_by_hand": (
        "зарегистрируйте его в CRM вручную (исходящий вебхук) с адресом обработчика {url} и событиями"
        " {events}; затем сохраните его токен приложения в подключении"
    ),
    "plan_webhook_seen": "зарегистрирован вручную: события с токеном приложения подключения приходят (первое — {at})",
    "plan_webhook_disabled": "CRM его отключила",
    "plan_automation": "автоматизация «{name}»",
    "plan_automation_runs": "выполняется в FunnelSync; в CRM записывать нечего",
    "plan_automation_no_account": (
        "у подключения ещё нет аккаунта {channels}: её сообщения ждут, пока его не добавят"
    ),
}

_missing = PLAN_TEXTS.keys() ^ _RUSSIAN.keys()
if _missing:  # a plan text without its Russian (or a Russian for no text) is a bug: fail at import
    raise RuntimeError(f"plan texts and their Russian differ: {sorted(_missing)}")

LABELS: dict[str, tuple[str, str]] = {key: (_RUSSIAN[key], english) for key, english in PLAN_TEXTS.items()}

LABELS.update(
    {
        "plan_kind_pipeline": ("воронка", "pipeline"),
        "plan_kind_stage": ("стадия", "stage"),
        "plan_kind_field": ("поле", "field"),
        "plan_kind_requirement": ("обязательность", "requirement"),
        "plan_kind_loss_reason": ("причина отказа", "loss reason"),
        "plan_kind_webhook": ("вебхук", "webhook"),
        "plan_kind_automation": ("автоматизация", "automation"),
        "plan_attr_name": ("название", "name"),
        "plan_attr_color": ("цвет", "colour"),
        "plan_attr_sort": ("порядок", "sort"),
        "plan_action_create": ("создать", "create"),
        "plan_action_change": ("изменить", "change"),
        "plan_action_unchanged": ("без изменений", "unchanged"),
        "plan_action_delete": ("удалить", "delete"),
        "plan_action_blocked": ("не применить", "blocked"),
        "plan_action_unmanaged": ("не управляется", "left alone"),
        "plan_action_manual": ("вручную", "by hand"),
        "field_type_string": ("строка", "string"),
        "field_type_text": ("текст", "text"),
        "field_type_number": ("число", "number"),
        "field_type_money": ("деньги", "money"),
        "field_type_date": ("дата", "date"),
        "field_type_datetime": ("дата и время", "date and time"),
        "field_type_enum": ("список", "list"),
        "field_type_boolean": ("да/нет", "yes/no"),
        "field_type_url": ("ссылка", "link"),
    }
)
