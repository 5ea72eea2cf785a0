"""The stores composed over one database, the same on every backend (service/contracts.py
`Stores`): a backend's `Database` inherits them."""

from __future__ import annotations

from storage.sql import SqlDatabase
from storage.sql.addresses import AddressStore
from storage.sql.jobs import JobStore
from storage.sql.notifications import DeliveryStore, EventStore, SubscriptionStore
from storage.sql.retention import RetentionStore
from storage.sql.tasks import TaskStore
from storage.sql.uploads import UploadStore


class StoresOver:
    """One store per noun, each over the database `db` (which is `self` in a backend's Database)."""

    def compose_stores(self, db: SqlDatabase) -> None:
        self.jobs = JobStore(db)
        self.uploads = UploadStore(db)
        self.tasks = TaskStore(db)
        self.subscriptions = SubscriptionStore(db)
        self.deliveries = DeliveryStore(db)
        self.events = EventStore(db)
        self.retention = RetentionStore(db)
        self.addresses = AddressStore(db)
