"""`GET /health`: the API answers (envd's own `/health` is reached through the proxy)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

router = APIRouter()


@router.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    return "Health check successful"
