"""Labels of the funnel board, the overview's summary strip, the deal page's names and the plan legend."""

from __future__ import annotations

LABELS: dict[str, tuple[str, str]] = {
    # the board
    "board_responsible": ("Ответственный", "Responsible"),
    "board_everyone": ("Все", "Everyone"),
    "board_show": ("Показать", "Show"),
    "board_shown": ("Показаны {first}–{last} из {total}", "Showing {first}–{last} of {total}"),
    "board_next": ("Следующие {n}", "Next {n}"),
    "board_prev": ("Предыдущие", "Previous"),
    "board_first_page": ("В начало", "Back to the first"),
    "board_filtered": ("Только сделки: {name}", "Only the deals of {name}"),
    "board_clear_filter": ("Показать всех", "Show everyone"),
    "board_in_stage": ("{age} на стадии", "{age} in stage"),
    "board_loss_reason": ("Причина отказа", "Loss reason"),
    "board_deactivated": ("уволен", "deactivated"),
    "board_no_names": (
        "Имена пользователей CRM недоступны ({error}), показаны ID.",
        "CRM user names are unavailable ({error}); showing ids.",
    ),
    # the overview's summary strip
    "board_attention": ("Требует внимания", "Needs attention"),
    "board_late_deals": ("Просроченные сделки", "Late deals"),
    "board_failing_connections": ("Подключения с проблемами", "Failing connections"),
    "board_all_clear": (
        "Всё в порядке: просрочек, мёртвых писем и сбоев нет.",
        "All clear: nothing late, dead or failing.",
    ),
    "board_late": ("просрочено: {n}", "late: {n}"),
    "board_first_reconcile": ("первый запуск через ~{n} мин", "first run in ~{n} min"),
    "board_first_reconcile_due": ("первый запуск вот-вот", "first run due now"),
    # the plan's legend
    "board_legend": ("Обозначения", "Legend"),
}
