"""Database backends that report connection failures to the replica router."""
