"""Local Faker-API-compatible server (fakerapi.it ``/persons``) with switchable fault injection."""

from local_api.faults import FaultConfig
from local_api.server import LocalApiServer

__all__ = ["FaultConfig", "LocalApiServer"]
