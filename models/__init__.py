"""SQLAlchemy models. Import ``models.audit`` (and later tables) through this package."""

from models.audit import AuditRecord, Outcome
from models.base import Base
from models.shifts import ShiftChange, ShiftStatus
from models.wfm import DeliveryState, WfmAttempt, WfmDelivery

__all__ = [
    "AuditRecord",
    "Base",
    "DeliveryState",
    "Outcome",
    "ShiftChange",
    "ShiftStatus",
    "WfmAttempt",
    "WfmDelivery",
]
