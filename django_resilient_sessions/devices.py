"""What device a session runs on, from its user agent (ua-parser).

Parsed once, at login, and stored on the ``UserSession`` row, so lists and
admin filters never parse anything.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ua_parser import parse

__all__ = ["Device", "describe"]

TABLETS = ("iPad", "Kindle", "Tablet", "Nexus 7", "Nexus 9", "Nexus 10")
MOBILE_OS = ("iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Tizen")


@dataclass(frozen=True)
class Device:
    type: str  # "desktop", "mobile", "tablet", "bot" or "other"
    browser: str
    os: str


def _version(family: str, major: str | None) -> str:
    return f"{family} {major}" if major else family


@functools.lru_cache(maxsize=512)
def describe(user_agent: str) -> Device:
    """A short description of the device behind ``user_agent``."""
    if not user_agent:
        return Device("other", "", "")
    result = parse(user_agent)
    agent, system, device = result.user_agent, result.os, result.device
    browser = _version(agent.family, agent.major) if agent else ""
    os_name = _version(system.family, system.major) if system else ""
    family = device.family if device else ""
    if family == "Spider":
        kind = "bot"
    elif any(t in family for t in TABLETS) or (
        system and system.family == "Android" and "Mobile" not in user_agent
    ):
        kind = "tablet"
    elif system and system.family in MOBILE_OS:
        kind = "mobile"
    elif system and system.family not in ("Other", ""):
        kind = "desktop"
    else:
        kind = "other"
    return Device(kind, browser[:60], os_name[:60])
