"""Russian and English labels for the dashboard; the language comes from ?lang=, then a cookie."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

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
}


def lang_of(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    remembered = request.cookies.get(LANG_COOKIE)
    if remembered in LANGUAGES:
        return remembered
    return DEFAULT_LANG


def translator(lang: str) -> Callable[[str], str]:
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def t(key: str) -> str:
        pair = LABELS.get(key)
        return pair[index] if pair else key

    return t
