from tests.dashboard.support import dashboard

__all__ = ["dashboard"]
