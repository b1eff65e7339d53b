"""Import every domain's tables so Base.metadata is complete (Alembic, tests)."""

from app.analytics.models import DailyStageEntries, DailyStageExits
from app.bot.models import BotConversation
from app.connections.models import Connection
from app.dashboard.models import DashboardSessionRow
from app.db import Base
from app.deals.models import Deal, StageTransition, SyncState
from app.funnels.models import Funnel, FunnelMapping, FunnelStage
from app.leases import Lease
from app.messages.models import ChannelAccount, DealContacts, Message, OptOut
from app.outbox.models import OutboxCommand
from app.webhooks.models import InboxEvent

__all__ = [
    "Base",
    "BotConversation",
    "ChannelAccount",
    "Connection",
    "DailyStageEntries",
    "DailyStageExits",
    "DashboardSessionRow",
    "Deal",
    "DealContacts",
    "Funnel",
    "FunnelMapping",
    "FunnelStage",
    "InboxEvent",
    "Lease",
    "Message",
    "OptOut",
    "OutboxCommand",
    "StageTransition",
    "SyncState",
]
