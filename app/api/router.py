"""The /api router: every domain's endpoints, all behind the API token."""

from fastapi import APIRouter, Depends

from app.analytics.endpoints import router as analytics_router
from app.connections.endpoints import router as connections_router
from app.deals.endpoints import router as deals_router
from app.funnels.endpoints import router as provisioning_router
from app.library.endpoints import router as templates_router
from app.outbox.endpoints import router as outbox_router
from app.security import require_api_token
from app.webhooks.endpoints import router as events_router

api_router = APIRouter(prefix="/api", dependencies=[Depends(require_api_token)])
api_router.include_router(templates_router)
api_router.include_router(connections_router)
api_router.include_router(provisioning_router)
api_router.include_router(deals_router)
api_router.include_router(events_router)
api_router.include_router(outbox_router)
api_router.include_router(analytics_router)
