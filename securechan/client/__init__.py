"""The high-level client: :class:`Channel` (async) and :class:`SyncChannel`.

Importing this package loads aiohttp; ``import securechan`` alone does not.
"""

from securechan.client.channel import Channel, sanitize_filename
from securechan.client.results import Received, Rejected, SendResult
from securechan.client.sync import SyncChannel

__all__ = ["Channel", "Received", "Rejected", "SendResult", "SyncChannel", "sanitize_filename"]
