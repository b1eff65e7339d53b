"""Read-only analytics over the deal mirror: funnel conversion, time in stage, loss reasons, the board,
and the operations overview. Everything here is computed in SQL and shared by the JSON API and the
dashboard pages."""
