"""What the workers and the callback intake share: built once by the app's lifespan or CLI."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import httpx

from service.catalog import Catalog
from service.providers.base import Adapter
from service.settings import Settings
from service.tokens import CallbackTokens, UploadTokens
from storage.blobs import BlobStore
from storage.store import Store

Clock = Callable[[], int]  # epoch milliseconds, UTC


@dataclass
class WorkContext:
    settings: Settings
    store: Store
    blobs: BlobStore
    adapters: Mapping[str, Adapter]
    catalog: Catalog
    client: httpx.AsyncClient
    tokens: CallbackTokens
    upload_tokens: UploadTokens
    clock: Clock
    rand: random.Random
    # Set whenever new work is committed, so an in-process worker picks it up at once.
    wake: anyio.Event = field(default_factory=anyio.Event)

    def nudge(self) -> None:
        self.wake.set()

    def ms(self, seconds: float) -> int:
        return int(seconds * 1000)

    def webhook_url(self, provider: str, job_id: str) -> str:
        token = self.tokens.issue(provider, job_id)
        return f"{self.settings.public_url}/v1/callbacks/{provider}/{token}"
