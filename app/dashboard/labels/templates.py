"""Labels of the template pages: a company's own template uploaded, checked, planned and provisioned."""

from __future__ import annotations

LABELS: dict[str, tuple[str, str]] = {
    "tpl_upload": ("Загрузить свой шаблон", "Upload your own template"),
    "tpl_upload_title": ("Свой шаблон воронки", "Your own funnel template"),
    "tpl_upload_intro": (
        "Файл YAML в формате библиотеки (начните с копии: funnelsync templates new --from КЛЮЧ). "
        "Сначала он проверяется и показывается план; в CRM ничего не записывается, пока вы не примените план.",
        "A YAML file in the library's format (start from a copy: funnelsync templates new --from KEY). "
        "It is checked and the plan shown first; nothing is written to the CRM until you apply the plan.",
    ),
    "tpl_file": ("Файл шаблона (.yaml, до 256 КБ)", "Template file (.yaml, at most 256 KB)"),
    "tpl_check": ("Проверить и показать план", "Check and show the plan"),
    "tpl_no_connections": (
        "Нет подключений: сначала добавьте CRM (funnelsync connections add).",
        "No connections yet: add a CRM first (funnelsync connections add).",
    ),
    "tpl_invalid": ("Шаблон не прошёл проверку", "The template is not valid"),
    "tpl_invalid_intro": (
        "Исправьте все ошибки ниже и загрузите файл снова; ничего не записано.",
        "Fix every problem below and upload the file again; nothing was written.",
    ),
    "tpl_line": ("Строка", "Line"),
    "tpl_no_file": ("Выберите файл шаблона .yaml.", "Choose a .yaml template file."),
    "tpl_too_large": (
        "Файл слишком большой ({size} КБ); шаблон — не больше {limit} КБ.",
        "The file is too large ({size} KB); a template may be at most {limit} KB.",
    ),
    "tpl_own": ("Свой шаблон", "Your own template"),
    "tpl_origin": ("Откуда", "From"),
    "tpl_origin_library": ("библиотека", "library"),
    "tpl_origin_folder": ("ваша папка", "your folder"),
    "tpl_back_to_upload": ("Загрузить другой файл", "Upload another file"),
}
