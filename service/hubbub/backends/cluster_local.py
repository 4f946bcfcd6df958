"""The single-node ClusterView of the embedded backend."""

from __future__ import annotations

from hubbub.backends.base import LocalNode
from hubbub.types import JSONObject


class LocalCluster:
    def __init__(self) -> None:
        self._local: LocalNode | None = None

    async def start(self, local: LocalNode) -> None:
        self._local = local

    async def nodes(self) -> list[JSONObject]:
        return [self._local.info()] if self._local else []

    async def rooms(self) -> int:
        return self._local.room_count() if self._local else 0

    async def disconnect_user(self, user: str, code: int, reason: str | None) -> int:
        return self._local.disconnect_user(user, code, reason) if self._local else 0

    async def aclose(self) -> None:
        return None
