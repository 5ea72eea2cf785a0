"""What storage raises when the database cannot do what was asked (connection lost, disk full,
pool exhausted): driver exceptions become this at the storage boundary and nowhere else.

Kept minimal on purpose: the store refactor owns the storage exception tree and may grow or
replace this module; the PostgreSQL layer (storage/postgres/) needs only this one class.
"""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database is unreachable or refused the work; retrying later may succeed."""
