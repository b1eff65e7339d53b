"""Seed stage lists for the base funnel types (seed 000) and the funnels by goal (seed 002)."""

from __future__ import annotations

SEED_FILES: dict[str, str] = {
    "base.qualification": "000_4cae8ba139d5add0.txt",
    "base.new_sales": "000_4cae8ba139d5add0.txt",
    "base.active_clients": "000_4cae8ba139d5add0.txt",
    "base.win_back": "000_4cae8ba139d5add0.txt",
    "base.cold": "000_4cae8ba139d5add0.txt",
    "base.production": "000_4cae8ba139d5add0.txt",
    "base.feedback": "000_4cae8ba139d5add0.txt",
    "by_goal.qualification": "002_300631c6da79869b.txt",
    "by_goal.pre_sales": "002_300631c6da79869b.txt",
    "by_goal.active_base": "002_300631c6da79869b.txt",
    "by_goal.order_processing": "002_300631c6da79869b.txt",
    "by_goal.post_sales": "002_300631c6da79869b.txt",
}

SEED_STAGES: dict[str, list[str]] = {
    "base.qualification": [
        "Сбор первичных данных о клиенте",
        "Оценка потребностей",
        "Проверка платежеспособности",
        "Сегментация по критериям",
    ],
    "base.new_sales": [
        "Презентация продукта",
        "Работа с возражениями",
        "Формирование предложения",
        "Заключение сделки",
    ],
    "base.active_clients": [
        "Поддержание связи",
        "Дополнительные продажи",
        "Upsell/Cross-sell",
        "Мониторинг удовлетворенности",
    ],
    "base.win_back": [
        "Анализ причин отказа",
        "Работа с возражениями",
        "Альтернативные предложения",
        "Восстановление отношений",
    ],
    "base.cold": [
        "Поиск потенциальных клиентов",
        "Первичный контакт",
        "Выявление потребностей",
        "Презентация решения",
    ],
    "base.production": [
        "Планирование ресурсов",
        "Выполнение работ",
        "Контроль качества",
        "Закрытие сделки",
    ],
    "base.feedback": [
        "Сбор отзывов",
        "Анализ удовлетворенности",
        "Работа с негативом",
        "Улучшение сервиса",
    ],
    # Seed 002 names no stages for these funnels: every stage of their templates is derived.
    "by_goal.qualification": [],
    "by_goal.pre_sales": [],
    "by_goal.active_base": [],
    "by_goal.order_processing": [],
    "by_goal.post_sales": [],
}
