"""The /api router: every domain's endpoints, all behind the API token."""

from fastapi import APIRouter, Depends

from app.library.endpoints import router as templates_router
from app.security import require_api_token

api_router = APIRouter(prefix="/api", dependencies=[Depends(require_api_token)])
api_router.include_router(templates_router)
