"""Russian and English labels for the dashboard; the language comes from ?lang=, then a cookie."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request

from app.dashboard import labels as label_modules

LANG_COOKIE = "funnelsync_lang"
LANGUAGES = ("ru", "en")
DEFAULT_LANG = "ru"  # the CRMs and the templates are Russian-first

# key -> (ru, en)
LABELS: dict[str, tuple[str, str]] = {
    "app": ("FunnelSync", "FunnelSync"),
    "nav": ("Разделы", "Sections"),
    "overview": ("Обзор", "Overview"),
    "failures": ("Сбои", "Failures"),
    "templates": ("Шаблоны", "Templates"),
    "logout": ("Выйти", "Log out"),
    "login": ("Вход", "Log in"),
    "login_title": ("Вход в панель FunnelSync", "Log in to the FunnelSync dashboard"),
    "token": ("API-токен", "API token"),
    "token_hint": (
        "Значение FUNNELSYNC_API_TOKEN (или файла api-token в папке данных).",
        "The value of FUNNELSYNC_API_TOKEN (or of the api-token file in the data folder).",
    ),
    "wrong_token": (
        "Неверный токен. Проверьте FUNNELSYNC_API_TOKEN.",
        "Wrong token. Check FUNNELSYNC_API_TOKEN.",
    ),
    "skip": ("Перейти к содержимому", "Skip to content"),
    "language": ("Язык", "Language"),
    "connections": ("Подключения", "Connections"),
    "no_connections": (
        "Подключений нет. Добавьте: funnelsync connections add.",
        "No connections yet. Add one: funnelsync connections add.",
    ),
    "connection": ("Подключение", "Connection"),
    "crm": ("CRM", "CRM"),
    "status": ("Статус", "Status"),
    "active": ("активно", "active"),
    "paused": ("приостановлено", "paused"),
    "degraded": ("с перебоями", "degraded"),
    "unreachable": ("недоступна", "unreachable"),
    "last_push": ("Последняя успешная отправка", "Last successful push"),
    "last_success": ("Последний успешный запрос к CRM", "Last successful CRM call"),
    "crm_failing": ("Запросы к CRM не проходят", "CRM calls are failing"),
    "last_crm_error": ("Последняя ошибка CRM", "Last CRM error"),
    "last_webhook": ("Последний вебхук", "Last webhook"),
    "never": ("никогда", "never"),
    "inbox_lag": ("Задержка входящих", "Inbox lag"),
    "events": ("События", "Events"),
    "outbox": ("Исходящие команды", "Outbox"),
    "dead_letters": ("Мёртвые письма", "Dead letters"),
    "unknown_stages": ("Неизвестные стадии", "Unknown stages"),
    "reconcile": ("Сверка", "Reconcile"),
    "reconcile_error": ("Ошибка сверки", "Reconcile error"),
    "token_expires": ("Токен действует до", "Token expires"),
    "expired": ("истёк", "expired"),
    "no_expiry": ("бессрочный (вебхук или долгосрочный токен)", "no expiry (webhook or long-lived token)"),
    "renewed_on_use": ("обновится при следующем запросе", "renewed on the next call"),
    "refresh_token_lapses": ("Refresh-токен действует до", "Refresh token lapses"),
    "domain_moved": ("Адрес CRM сменился", "The CRM's address changed"),
    "webhook_re_enabled": (
        "CRM отключила наш вебхук; FunnelSync включил его снова",
        "The CRM disabled our webhook; FunnelSync re-enabled it",
    ),
    "webhook_re_registered": (
        "Наш вебхук пропал из CRM; FunnelSync зарегистрировал его снова",
        "Our webhook was gone from the CRM; FunnelSync registered it again",
    ),
    "webhook_failing": (
        "Вебхук в CRM отключён, и включить его не удаётся",
        "The CRM's webhook to us is off and cannot be re-enabled",
    ),
    "deals": ("Сделки", "Deals"),
    "funnels": ("Воронки", "Funnels"),
    "funnel": ("Воронка", "Funnel"),
    "board": ("Доска", "Board"),
    "analytics": ("Аналитика", "Analytics"),
    "updated": ("Обновлено", "Updated"),
    "pending": ("в очереди", "pending"),
    "processed": ("обработано", "processed"),
    "failed": ("ошибка", "failed"),
    "dead": ("не доставлено", "dead"),
    "done": ("выполнено", "done"),
    "failed_events": ("Входящие события с ошибкой", "Failed inbox events"),
    "failed_commands": ("Команды с ошибкой и отказом", "Failed and dead commands"),
    "no_failed_events": ("Нет событий с ошибкой.", "No failed events."),
    "no_failed_commands": ("Нет команд с ошибкой.", "No failed commands."),
    "retry": ("Повторить", "Retry"),
    "provision_into": ("Создать воронку в подключении", "Provision into connection"),
    "show_plan": ("Показать план", "Show the plan"),
    "plan": ("План", "Plan"),
    "apply_plan": ("Применить план", "Apply the plan"),
    "applied": ("План применён.", "The plan was applied."),
    "nothing_to_change": ("Изменять нечего.", "Nothing to change."),
    "apply_failed": ("Применить не удалось", "Applying failed"),
    "crm_failed": ("CRM не ответила", "The CRM failed"),
    "apply_again": (
        "Созданное до сбоя записано: примените план ещё раз, чтобы закончить.",
        "What was created before the failure is recorded: apply the plan again to complete it.",
    ),
    "what": ("Что", "What"),
    "why": ("Почему", "Why"),
    "back_to_template": ("Назад к шаблону", "Back to the template"),
    "retry_selected": ("Повторить выбранные", "Retry selected"),
    "retry_matching": ("Повторить все по фильтру", "Retry all matching"),
    "retry_selected_events": ("Повторить выбранные события", "Retry selected events"),
    "retry_matching_events": (
        "Повторить все события с ошибкой (по фильтру)",
        "Retry all failed events (matching the filter)",
    ),
    "event_retry_hint": (
        "Повтор возвращает событие в очередь разбора. Это помогает после обновления FunnelSync,"
        " исправившего разбор; иначе событие снова получит ошибку.",
        "A retry puts the event back in the processing queue. This helps after upgrading FunnelSync"
        " with a parser fix; otherwise the event fails again.",
    ),
    "filter": ("Фильтр", "Filter"),
    "reset_filter": ("Сбросить фильтр", "Clear the filter"),
    "filter_hint": (
        "Подключение сужает оба списка; тип и статус — только команды.",
        "The connection narrows both lists; kind and status narrow the commands only.",
    ),
    "kind_move": ("перенос стадии", "stage move"),
    "kind_task": ("задача", "task"),
    "kind_deal": ("новая сделка", "new deal"),
    "kind_task_due": ("срок задачи", "task deadline"),
    "kind_comment": ("комментарий", "comment"),
    "kind_fields": ("поля сделки", "deal fields"),
    "bad_request": ("Неверный запрос", "Bad request"),
    "select": ("Выбрать", "Select"),
    "retried": ("Отправлено повторно: {n}", "Queued again: {n}"),
    "received": ("Получено", "Received"),
    "attempts": ("Попытки", "Attempts"),
    "error": ("Ошибка", "Error"),
    "crm_error": ("Ответ CRM", "CRM error"),
    "body": ("Тело запроса", "Body"),
    "kind": ("Тип", "Kind"),
    "deal": ("Сделка", "Deal"),
    "next_attempt": ("Следующая попытка", "Next attempt"),
    "created": ("Создано", "Created"),
    "finished": ("Завершено", "Finished"),
    "stage": ("Стадия", "Stage"),
    "amount": ("Сумма", "Amount"),
    "overdue": ("просрочено", "overdue"),
    "overdue_sla": ("Просрочен срок стадии", "Past the stage SLA"),
    "sla": ("Срок", "SLA"),
    "in_stage_since": ("На стадии с", "In stage since"),
    "showing_first": ("показаны первые", "showing the first"),
    "unknown_stage_deals": ("Сделок на неизвестных стадиях", "Deals in unmapped stages"),
    "no_deals": ("Сделок нет", "No deals"),
    "responsible": ("Ответственный", "Responsible"),
    "fields": ("Поля", "Fields"),
    "history": ("История стадий", "Stage history"),
    "from_stage": ("Откуда", "From"),
    "to_stage": ("Куда", "To"),
    "at": ("Когда", "When"),
    "source": ("Источник", "Source"),
    "commands": ("Команды в CRM", "Commands issued"),
    "no_commands": ("Команд не было.", "No commands issued."),
    "period": ("Период", "Period"),
    "from": ("С", "From"),
    "to": ("По", "To"),
    "apply": ("Показать", "Show"),
    "conversion": ("Конверсия", "Conversion"),
    "reached": ("Входы в стадию", "Entries"),
    "to_next": ("Дальше по воронке", "Moved on"),
    "to_won": ("Выиграны", "Won"),
    "conversion_help": (
        "Входы в стадию за период; «дальше» — следующий переход сделки вёл на следующую стадию или дальше"
        " (не в отказ); «выиграны» — сделка сейчас на успешной стадии.",
        "Entries into each stage in the period; 'moved on': the deal's next move went to the next stage"
        " or beyond (not to a failure stage); 'won': the deal is now in the success stage.",
    ),
    "time_help": (
        "От входа в стадию (в периоде) до следующего перехода сделки.",
        "From entering the stage (in the period) to the deal's next stage change.",
    ),
    "time_in_stage": ("Медианное время на стадии", "Median time in stage"),
    "median": ("Медиана", "Median"),
    "samples": ("Переходов", "Transitions"),
    "loss_reasons": ("Причины отказа", "Loss reasons"),
    "no_losses": ("Проигранных сделок за период нет.", "No lost deals in the period."),
    "temperature": ("Температура (сейчас)", "Temperature (now)"),
    "cold": ("холодные", "cold"),
    "warm": ("тёплые", "warm"),
    "hot": ("горячие", "hot"),
    "unknown": ("неизвестно", "unknown"),
    "share": ("Доля", "Share"),
    "niche": ("Ниша", "Niche"),
    "all": ("Все", "All"),
    "goal": ("Цель", "Goal"),
    "stages": ("Стадии", "Stages"),
    "semantics": ("Тип стадии", "Stage type"),
    "process": ("в работе", "process"),
    "success": ("успех", "success"),
    "failure": ("провал", "failure"),
    "required_fields": ("Обязательные поля", "Required fields"),
    "tasks": ("Задачи", "Tasks"),
    "notes": ("Примечания", "Notes"),
    "type": ("Тип", "Type"),
    "code": ("Код", "Code"),
    "value": ("Значение", "Value"),
    "name": ("Название", "Name"),
    "derived": ("выведено", "derived"),
    "automations": ("Автоматизации", "Automations"),
    "trigger": ("Когда", "When"),
    "only_in_stages": ("только на стадиях", "only in stages"),
    "trigger_stage_entry": ("вход в стадию", "enters stage"),
    "trigger_stalled": ("без движения на стадии", "no progress in stage"),
    "for_at_least": ("дольше", "for"),
    "trigger_before_date": ("до даты в поле", "before the date in"),
    "trigger_after_date": ("после даты в поле", "after the date in"),
    "trigger_won": ("сделка успешна", "deal won"),
    "trigger_lost": ("сделка провалена", "deal lost"),
    "trigger_recurring": ("каждые", "every"),
    "months_after_won": ("мес. после успешного закрытия сделки", "month(s) after the deal is won"),
    "action_notify": ("сообщение клиенту", "message to the client"),
    "action_create_deal": ("новая сделка", "new deal"),
    "action_move": ("перевести на стадию", "move to stage"),
    "action_set_field": ("заполнить поле", "set field"),
    "action_task": ("задача", "task"),
    "action_webhook": ("вебхук", "webhook"),
    "subject": ("Тема", "Subject"),
    "qualification_bot": ("Квалификация в Telegram-боте", "Telegram qualification bot"),
    "threshold": ("Проходной балл", "Pass score"),
    "otherwise": ("иначе", "otherwise"),
    "template": ("Шаблон", "Template"),
    "not_found": ("Не найдено", "Not found"),
    "back": ("Назад", "Back"),
    "title": ("Название", "Title"),
    "actions": ("Действия", "Actions"),
    "deleted": ("удалена", "deleted"),
    "chart_reached": ("Входы в стадии за период", "Entries into each stage in the period"),
    # Error pages: the heading says what kind of error by status code (error_heading below).
    "err_unauthorized": ("Нужен API-токен", "API token required"),
    "err_forbidden": ("Доступ запрещён", "Forbidden"),
    "err_not_allowed": ("Так к этому адресу обращаться нельзя", "Method not allowed"),
    "err_too_large": ("Слишком большой запрос", "Request too large"),
    "err_invalid_input": ("Неверные данные", "Invalid input"),
    "err_too_many": ("Слишком много запросов", "Too many requests"),
    "err_server": ("Внутренняя ошибка", "Internal error"),
    "err_crm_unavailable": ("CRM недоступна", "The CRM is unavailable"),
    "err_other": ("Ошибка", "Error"),
    "err_no_page": ("Такой страницы нет.", "There is no such page."),
    "err_server_text": (
        "Запрос не выполнен из-за внутренней ошибки. Подробности записаны в журнал сервиса.",
        "The request failed with an internal error. The details are in the service log.",
    ),
    "err_invalid_value": (
        "Неверное значение параметра {field}: {value}",
        "Invalid value for {field}: {value}",
    ),
    "err_missing_value": ("Не указан параметр {field}", "Missing value for {field}"),
    "home": ("На главную", "Home"),
    "msg_wrong_method": (
        "Этот адрес не принимает такой запрос.",
        "This address does not take this kind of request.",
    ),
    "msg_no_file": ("Такого файла нет.", "There is no such file."),
    # Services' English messages that reach a page (see KNOWN_MESSAGES): the dashboard's words.
    "msg_no_funnel": ("Воронки с id {id} нет.", "There is no funnel with id {id}."),
    "msg_no_deal": ("Сделки с id {id} нет.", "There is no deal with id {id}."),
    "msg_no_template": ("Шаблона с ключом {key} нет.", "There is no template with key {key}."),
    "msg_no_connection": ("Подключения с именем {name} нет.", "There is no connection named {name}."),
    "msg_no_command": ("Команды с id {id} нет.", "There is no command with id {id}."),
    "msg_no_event": ("Входящего события с id {id} нет.", "There is no inbox event with id {id}."),
    "msg_bad_kind": (
        "Неизвестный тип команды {kind}; возможные: {known}",
        "Unknown command kind {kind}; one of: {known}",
    ),
    "msg_bad_status": (
        "Неизвестный статус {status}; возможные: {known}",
        "Unknown status {status}; one of: {known}",
    ),
    "msg_bad_scope": ("Неизвестный объём повтора {scope}", "Unknown retry scope {scope}"),
    "msg_api_token": (
        "Это адрес API: ему нужен заголовок Authorization: Bearer <FUNNELSYNC_API_TOKEN>."
        " Панель — на главной странице.",
        "This is an API address: it needs the header Authorization: Bearer <FUNNELSYNC_API_TOKEN>."
        " The dashboard is on the home page.",
    ),
    "msg_csrf": (
        "Форма устарела (нет CSRF-токена или он неверен): обновите страницу и повторите.",
        "The form is out of date (its CSRF token is missing or wrong): reload the page and retry.",
    ),
    "msg_throttled": (
        "Слишком много неудачных попыток с этого адреса; повторите через {wait} с",
        "Too many failed attempts from this address; try again in {wait} s",
    ),
    "msg_bad_date": (
        "{name}={value}: не дата (ГГГГ-ММ-ДД) и не дата-время ISO 8601",
        "{name}={value} is not a date (YYYY-MM-DD) or an ISO 8601 date-time",
    ),
    "msg_empty_period": (
        "Период пуст: начало {start} не раньше конца {end}",
        "The period is empty: from {start} is not before to {end}",
    ),
    "msg_too_many_pipelines": (
        "Воронок в CRM уже {count}, а можно не больше {limit}; архивируйте или удалите одну,"
        " прежде чем создавать {key}. Ничего не записано.",
        "The CRM already has {count} pipelines and allows at most {limit}; archive or delete one"
        " before provisioning {key}. Nothing was written.",
    ),
    "msg_too_many_stages": (
        "Стадий в воронке вместе со стадиями CRM было бы {count}, а CRM допускает не больше {limit}."
        " Ничего не записано.",
        "The pipeline would have {count} stages including the CRM's own; the CRM allows at most"
        " {limit}. Nothing was written.",
    ),
    "msg_stage_id_too_long": (
        "Длина id стадии {stage_id} была бы {length}, а CRM допускает не больше {limit}"
        " (сократите код стадии {code}). Ничего не записано.",
        "Stage id {stage_id} would be {length} characters; the CRM allows {limit}"
        " (shorten stage code {code}). Nothing was written.",
    ),
    # Units of fmt_duration (app/dashboard/render.py).
    "unit_d": ("д", "d"),
    "unit_h": ("ч", "h"),
    "unit_m": ("мин", "m"),
    "unit_s": ("с", "s"),
    # The channels an automation's message goes through (funnel_templates: notify.channels).
    "channel_telegram": ("Telegram", "Telegram"),
    "channel_sms": ("SMS", "SMS"),
    "channel_email": ("эл. почта", "email"),
    # Library niches and goals (funnel_templates: the `niche` folder and the `goal` code).
    "niche_auto_service": ("Автосервис", "Auto service"),
    "niche_base": ("Базовые воронки", "Base funnels"),
    "niche_by_goal": ("Воронки по целям", "Funnels by goal"),
    "niche_construction": ("Строительство", "Construction"),
    "niche_dentistry": ("Стоматология", "Dentistry"),
    "niche_education": ("Образование", "Education"),
    "niche_general": ("Общие", "General"),
    "niche_hotel": ("Гостиницы", "Hotels"),
    "niche_legal": ("Юридические услуги", "Legal services"),
    "niche_logistics": ("Логистика", "Logistics"),
    "niche_medical": ("Медицинский центр", "Medical centre"),
    "niche_production": ("Производство", "Production"),
    "niche_real_estate": ("Недвижимость", "Real estate"),
    "niche_retail": ("Розничная торговля", "Retail"),
    "niche_sports": ("Спорт", "Sports"),
    "niche_wholesale": ("Оптовая торговля", "Wholesale"),
    "goal_qualification": ("Квалификация", "Qualification"),
    "goal_pre_sales": ("Предпродажа", "Pre-sales"),
    "goal_new_sales": ("Новые продажи", "New sales"),
    "goal_active_base": ("Работа с активной базой", "Active customer base"),
    "goal_win_back": ("Возврат клиентов", "Win-back"),
    "goal_cold": ("Холодные продажи", "Cold sales"),
    "goal_delivery": ("Исполнение заказа", "Delivery"),
    "goal_feedback": ("Обратная связь", "Feedback"),
    "goal_post_sales": ("Постпродажа", "Post-sales"),
    "goal_full_cycle": ("Полный цикл", "Full cycle"),
}

# The English messages services raise (an exception's text) that a dashboard page shows, as the
# label key that says them in the dashboard's words; each {name} in the pattern is carried over.
# Anything else is shown as it is (the CRM's own words, for one).
KNOWN_MESSAGES: dict[str, str] = {
    # Starlette's own details for an unknown URL and a wrong method; the static routes' 404.
    "Not Found": "err_no_page",
    "Method Not Allowed": "msg_wrong_method",
    "no such file": "msg_no_file",
    "no funnel with id {id}": "msg_no_funnel",
    "no deal with id {id}": "msg_no_deal",
    "no template with key {key}; `funnelsync templates list` shows the keys": "msg_no_template",
    "no connection named {name}; `funnelsync connections list` shows them": "msg_no_connection",
    "no outbox command with id {id}": "msg_no_command",
    "no inbox event with id {id}": "msg_no_event",
    "unknown command kind {kind}; one of: {known}": "msg_bad_kind",
    "unknown status {status}; one of: {known}": "msg_bad_status",
    "unknown retry scope {scope}": "msg_bad_scope",
    "missing or wrong API token: send 'Authorization: Bearer <FUNNELSYNC_API_TOKEN>'": "msg_api_token",
    "the form's CSRF token is missing or wrong; reload the page and retry": "msg_csrf",
    "too many failed attempts from this address; try again in {wait} s": "msg_throttled",
    "{name}={value} is not a date (YYYY-MM-DD) or an ISO 8601 date-time": "msg_bad_date",
    "the period is empty: from {start} is not before to {end}": "msg_empty_period",
    "the CRM already has {count} pipelines and allows at most {limit}; archive or delete one "
    "before provisioning {key}; nothing was written": "msg_too_many_pipelines",
    "the pipeline would have {count} stages including the CRM's own; the CRM allows at most "
    "{limit}; nothing was written": "msg_too_many_stages",
    "stage id {stage_id} would be {length} characters; the CRM allows {limit} (shorten stage code "
    "{code}); nothing was written": "msg_stage_id_too_long",
}

# Which heading an error page gets for its status code.
ERROR_HEADINGS: dict[int, str] = {
    400: "bad_request",
    401: "err_unauthorized",
    403: "err_forbidden",
    404: "not_found",
    405: "err_not_allowed",
    413: "err_too_large",
    422: "err_invalid_input",
    429: "err_too_many",
    500: "err_server",
    502: "crm_failed",
    503: "err_crm_unavailable",
}


def _merge_label_modules() -> None:
    """Each area's own labels live in app/dashboard/labels/<area>.py (a LABELS dict of the same
    shape), so areas add strings without editing one shared file. A key defined twice is a bug."""
    for module_info in pkgutil.iter_modules(label_modules.__path__):
        module = importlib.import_module(f"{label_modules.__name__}.{module_info.name}")
        extra: dict[str, tuple[str, str]] = module.LABELS
        clash = LABELS.keys() & extra.keys()
        if clash:
            raise RuntimeError(f"labels defined twice ({module_info.name}): {sorted(clash)}")
        LABELS.update(extra)


_merge_label_modules()


def lang_of(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    remembered = request.cookies.get(LANG_COOKIE)
    if remembered in LANGUAGES:
        return remembered
    return DEFAULT_LANG


def translator(lang: str) -> Callable[..., str]:
    """t(key) or t(key, name=value...): the label in `lang`, its {name}s filled in. An unknown key
    comes back as itself (tests/dashboard/test_i18n_complete.py finds those on every page)."""
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def t(key: str, /, **params: object) -> str:
        pair = LABELS.get(key)
        if pair is None:
            return key
        return pair[index].format(**params) if params else pair[index]

    return t


def _message_pattern(english: str) -> re.Pattern[str]:
    """A KNOWN_MESSAGES pattern as a regular expression: literal text, each {name} a group."""
    parts = re.split(r"\{(\w+)\}", english)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts))
    return re.compile(regex, re.DOTALL)


_MESSAGE_PATTERNS = [(_message_pattern(english), key) for english, key in KNOWN_MESSAGES.items()]


def translate_message(message: str, lang: str) -> str:
    """A service's English message in the dashboard's words in `lang`; as it is when unknown."""
    for pattern, key in _MESSAGE_PATTERNS:
        match = pattern.fullmatch(message)
        if match:
            return translator(lang)(key, **match.groupdict())
    return message


# Parameters of keyed texts (the plan's lines) whose values are codes with labels of their own:
# parameter name -> the label key's prefix.
CODE_PARAMS: dict[str, str] = {"semantics": "", "type": "field_type_"}


def translate_text(text: Mapping[str, Any] | None, lang: str) -> str:
    """A keyed text ({"key": label key, "params": {...}}, as PlanText.as_json gives) in `lang`."""
    if not text:
        return ""
    t = translator(lang)
    params = {
        name: t(CODE_PARAMS[name] + str(value)) if name in CODE_PARAMS else value
        for name, value in text["params"].items()
    }
    return t(text["key"], **params)


def error_heading(status_code: int) -> str:
    """The label key of an error page's heading for its status code."""
    return ERROR_HEADINGS.get(status_code, "err_other")
