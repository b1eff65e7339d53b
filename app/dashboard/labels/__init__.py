"""Dashboard labels per area: each module defines LABELS (key -> (ru, en)), merged by app.dashboard.i18n."""
