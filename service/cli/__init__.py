"""`attachments-gateway`, the operator's command line."""

from .main import main

__all__ = ["main"]
