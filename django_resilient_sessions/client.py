"""Who is on the other end of a request, cleaned before it reaches the ledger.

Whatever a client sends (a user agent with NUL bytes or control characters,
a forged ``X-Forwarded-For`` that an ``IP_RESOLVER`` passes on, a resolver that
raises) ends up as a plain string and a valid IP address or ``None``: never a
500, never a login that cannot be recorded.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

from .conf import conf

__all__ = ["ClientInfo", "clean_agent", "clean_ip", "from_request"]

logger = logging.getLogger("django_resilient_sessions")
AGENT_MAX = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None = None
    user_agent: str = ""


def clean_agent(value: Any) -> str:
    """A user agent fit for a ``CharField``: printable, at most 300 characters."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub("", value)[:AGENT_MAX].strip()


def clean_ip(value: Any) -> str | None:
    """A normalised IPv4 or IPv6 address, or ``None`` for anything else."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        address = ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def from_request(request: Any) -> ClientInfo:
    """The cleaned client address (``IP_RESOLVER`` or ``REMOTE_ADDR``) and user agent."""
    meta = getattr(request, "META", {})
    raw: Any = meta.get("REMOTE_ADDR")
    resolver = conf.IP_RESOLVER
    if resolver is not None:
        try:
            raw = resolver(request)
        # A site's resolver is foreign code handed client headers: whatever it
        # raises, the request goes on without an address.
        except Exception:
            logger.warning("IP_RESOLVER raised; recorded without an IP.", exc_info=True)
            raw = None
    ip = clean_ip(raw)
    if raw and ip is None:
        logger.warning("Client address %r is not an IP address; not recorded.", str(raw)[:64])
    return ClientInfo(ip, clean_agent(meta.get("HTTP_USER_AGENT", "")))
