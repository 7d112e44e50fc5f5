"""SQLAlchemy models. Import ``models.audit`` (and later tables) through this package."""

from models.audit import AuditRecord, Outcome
from models.base import Base

__all__ = ["AuditRecord", "Base", "Outcome"]
