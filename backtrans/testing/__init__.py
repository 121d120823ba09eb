"""Loopback stand-ins for the Hub used by tests (never by a real run)."""
