"""Web accounts of the restore page, their sign-in sessions and the device-cookie key."""

from .repository import DEVICE_SECONDS, Accounts, WebSession, check_password_rules

__all__ = ["DEVICE_SECONDS", "Accounts", "WebSession", "check_password_rules"]
