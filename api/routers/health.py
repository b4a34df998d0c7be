"""``GET /health``: liveness with no dependencies touched (also the benchmark's trivial route)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


@router.get("/health", response_model=Health, summary="Liveness (touches no dependency)")
async def health() -> Health:
    return Health(status="ok")
