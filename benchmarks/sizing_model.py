"""The sizing model: a site at 10k, 100k and 1M requests/s, from :mod:`benchmarks.sizing`'s
measurements and the assumptions below (each one a named constant: change it and run
``python -m benchmarks --sections sizing`` again, or ``--render`` the results file).

Formulas (``R`` requests/s; measured figures in brackets):

- visits/s ``V = R / REQUESTS_PER_VISIT``; logins/s ``V * LOGINS_PER_VISIT``; logouts/s
  ``V * LOGOUTS_PER_VISIT``; activity updates/s ``V * LOGGED_IN_SHARE * VISIT_SECONDS /
  [ACTIVITY_UPDATE_INTERVAL]``.
- Redis keys made/s ``V * (NEW_SESSIONS_PER_VISIT + LOGINS_PER_VISIT)`` (a login's
  ``cycle_key`` makes a new key); each lives ``SESSION_COOKIE_AGE`` after its last write,
  so keys held ``= made/s * SESSION_COOKIE_AGE``, of which tombstones ``V * (LOGINS +
  LOGOUTS per visit) * SESSION_COOKIE_AGE``. Memory ``= live * [bytes per 1 KB session] +
  tombstones * [bytes per tombstone]`` (``used_memory`` growth per key).
- Redis busy time/s ``= sum over request kinds of rate * sum over its [commands] of 1 /
  [commands/s of one shard]``; shards for load ``= ceil(busy / SHARD_BUSY_TARGET)``; shards
  for memory ``= ceil(memory / (NODE_MEMORY_GB * NODE_FILL))``.
- Cookie bytes up ``= R * [Cookie header bytes]``; down ``= (R * WRITE_SHARE + activity
  updates/s) * [Set-Cookie bytes of a save]``.
- Ledger writes/s ``= logins/s * [writes per login] + logouts/s * [writes per logout] +
  activity updates/s * [writes per update]``; against [ledger writes/s measured here].
"""

from __future__ import annotations

import math
from typing import Any

RATES = (10_000, 100_000, 1_000_000)

#: Assumptions of the model (a shop-like site; every one is stated in docs/sizing.md).
ASSUMPTIONS: dict[str, float] = {
    "REQUESTS_PER_VISIT": 60,  # a 10-minute visit, a request every 10 s
    "VISIT_SECONDS": 600,
    "WRITE_SHARE": 0.10,  # requests that change the session (cart, flash message...)
    "LOGGED_IN_SHARE": 0.5,  # visits that are logged in
    "LOGINS_PER_VISIT": 0.2,
    "LOGOUTS_PER_VISIT": 0.05,
    "NEW_SESSIONS_PER_VISIT": 0.3,  # new visitor, new device, expired cookie
    "SESSION_COOKIE_AGE": 1_209_600,  # Django's default, two weeks
    "SHARD_BUSY_TARGET": 0.5,  # a shard's core kept half idle (peaks, replication, forks)
    "NODE_MEMORY_GB": 32,
    "NODE_FILL": 0.75,  # room for fork copy-on-write and replication buffers
}

LIVE = "login, 1 KB of data"  # the session size the model assumes (the larger one)
TOMBSTONE = "tombstone"


def _busy(counts: dict[str, int], redis: dict[str, Any]) -> float:
    """Seconds of one shard's time a request with these command counts takes."""
    get = redis["GET (a load)"]["ops_per_s"]
    script = redis["EVAL update script (a save)"]["ops_per_s"]
    return sum(n / (script if name.startswith("eval") else get) for name, n in counts.items())


def _cookie_header(requests: dict[str, Any], profile: str) -> int:
    """The ``Cookie`` header a browser sends with a session of this profile."""
    token = requests["backups"][profile]["backup_token_chars"]
    session = len(requests["session_cookie_name"]) + 1 + requests["session_key_chars"]
    return session + 2 + len(requests["backup_cookie_name"]) + 1 + token


def _set_cookie(requests: dict[str, Any], profile: str) -> int:
    """The ``Set-Cookie`` headers of a save (the session's and its backup's, as measured on
    a write), with this profile's backup in place of the bench session's."""
    write = requests["per_request"]["write"]
    token = requests["backups"][profile]["backup_token_chars"]
    return int(write["set_cookie_bytes"] - write["backup_value_chars"] + token)


def model(measured: dict[str, Any], assumptions: dict[str, float] | None = None) -> dict[str, Any]:
    a = {**ASSUMPTIONS, **(assumptions or {})}
    memory = measured["memory"]
    requests = measured["requests"]
    per = requests["per_request"]
    redis = measured["redis"]
    ledger = measured["ledger"]
    interval = requests["activity_update_interval_s"]
    live_bytes = memory[LIVE]["used_memory_per_session"]
    tomb_bytes = memory[TOMBSTONE]["used_memory_per_session"]
    rows = []
    for rate in RATES:
        visits = rate / a["REQUESTS_PER_VISIT"]
        logins = visits * a["LOGINS_PER_VISIT"]
        logouts = visits * a["LOGOUTS_PER_VISIT"]
        updates = visits * a["LOGGED_IN_SHARE"] * a["VISIT_SECONDS"] / interval
        made = visits * (a["NEW_SESSIONS_PER_VISIT"] + a["LOGINS_PER_VISIT"])
        keys = made * a["SESSION_COOKIE_AGE"]
        tombs = visits * (a["LOGINS_PER_VISIT"] + a["LOGOUTS_PER_VISIT"]) * a["SESSION_COOKIE_AGE"]
        memory_gb = ((keys - tombs) * live_bytes + tombs * tomb_bytes) / 1e9
        row: dict[str, Any] = {
            "rate": rate,
            "visits_per_s": round(visits),
            "logins_per_s": round(logins),
            "logouts_per_s": round(logouts),
            "activity_updates_per_s": round(updates),
            "keys_millions": round(keys / 1e6, 1),
            "tombstones_millions": round(tombs / 1e6, 1),
            "memory_gb": round(memory_gb, 1),
        }
        if "skipped" not in redis:
            # Reads and writes; logins, logouts and activity updates replace a read.
            kinds = {
                "read": rate * (1 - a["WRITE_SHARE"]),
                "write": rate * a["WRITE_SHARE"],
                "login": logins,
                "logout": logouts,
                "read, activity update due": updates,
            }
            read = per["read"]["redis_by_command"]
            commands = busy = 0.0
            for kind, kind_rate in kinds.items():
                counts = per[kind]["redis_by_command"]
                minus = 0 if kind in ("read", "write") else 1
                commands += kind_rate * (sum(counts.values()) - minus * sum(read.values()))
                busy += kind_rate * (_busy(counts, redis) - minus * _busy(read, redis))
            row["redis_commands_per_s"] = round(commands)
            row["shards_for_load"] = max(1, math.ceil(busy / a["SHARD_BUSY_TARGET"]))
        row["shards_for_memory"] = max(
            1, math.ceil(memory_gb / (a["NODE_MEMORY_GB"] * a["NODE_FILL"]))
        )
        row["shards"] = max(row.get("shards_for_load", 1), row["shards_for_memory"])
        up = rate * _cookie_header(requests, LIVE)
        down = (rate * a["WRITE_SHARE"] + updates) * _set_cookie(requests, LIVE)
        row["cookie_up_mb_per_s"] = round(up / 1e6, 1)
        row["cookie_down_mb_per_s"] = round(down / 1e6, 1)
        row["cookie_gbit_per_s"] = round((up + down) * 8 / 1e9, 2)
        writes = (
            logins * per["login"]["ledger_writes"]
            + logouts * per["logout"]["ledger_writes"]
            + updates * per["read, activity update due"]["ledger_writes"]
        )
        row["ledger_writes_per_s"] = round(writes)
        row["ledger_vs_here"] = round(writes / max(ledger["writes_per_s"], 1), 1)
        rows.append(row)
    return {"assumptions": a, "model": rows}


# -- Markdown -------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def markdown(sizing: dict[str, Any]) -> list[str]:
    """The measured figures, then the model per request rate (for sizing.md)."""
    measured = sizing["measured"]
    memory = measured["memory"]
    requests = measured["requests"]
    per = requests["per_request"]
    lines = [
        "Redis memory per session (`MEMORY USAGE key SAMPLES 0` of the engine's entries; "
        "then the growth of `used_memory` per key, over "
        f"{next(iter(memory.values()))['copies']:,} copies of each written with their TTL):",
        "",
        "| session | data (JSON) | key | value | MEMORY USAGE | used_memory per key "
        "| per million |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in memory.items():
        per_million = row["used_memory_per_session"] * 1e6 / 2**20
        lines.append(
            f"| {name} | {row['data_json_bytes']:,} B | {row['key_bytes']} B | "
            f"{row['value_bytes']:,} B | {row['memory_usage_bytes']:,} B | "
            f"{_n(row['used_memory_per_session'])} B | {per_million:,.0f} MiB |"
        )
    lines += [
        "",
        "Per request, counted (Redis commands on the wire through a proxy, ledger statements "
        "that write, cookie headers; the bench site's session: a login and about 500 bytes "
        "of data):",
        "",
        "| request | Redis commands | round trips | ledger writes | Cookie header next (B) "
        "| Set-Cookie (B) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in per.items():
        commands = ", ".join(f"{n} {c.upper()}" for c, n in sorted(row["redis_by_command"].items()))
        writes = ", ".join(row["ledger_statements"]) or "none"
        lines.append(
            f"| {name} | {row['redis_commands']} ({commands or '-'}) | "
            f"{row['redis_round_trips']} | {row['ledger_writes']} ({writes}) | "
            f"{row['cookie_header_bytes_next']:,} | "
            f"{row['set_cookie_bytes']:,} ({row['set_cookies']} cookies) |"
        )
    lines += ["", "Backup token (the backup cookie's value) by session:", ""]
    for name, row in requests["backups"].items():
        lines.append(
            f"- {name} ({row['data_json_bytes']:,} B of JSON): "
            f"{row['backup_token_chars']:,} characters"
        )
    redis = measured["redis"]
    lines.append("")
    if "skipped" in redis:
        lines.append(f"Redis capacity: not measured ({redis['skipped']}).")
    else:
        lines.append(
            f"One redis-server (one core), `redis-benchmark` with {redis['clients']} "
            f"connections, no pipelining, {redis['keys']:,} keys of {redis['value_bytes']:,} "
            "bytes: "
            + "; ".join(
                f"{name} {redis[name]['ops_per_s']:,}/s (p99 {redis[name]['p99_ms']} ms)"
                for name in ("GET (a load)", "EVAL update script (a save)")
            )
            + "."
        )
    ledger = measured["ledger"]
    lines += [
        "",
        f"Ledger: {ledger['writes_per_s']:,} activity updates/s ({ledger['statement']}; "
        f"{ledger['threads']} threads for {ledger['seconds']} s, {ledger['database']}).",
        "",
        "The model (assumptions and formulas on the documentation page):",
        "",
        "| requests/s | visits/s | logins/s | activity updates/s | keys held | memory "
        "| Redis commands/s | shards (load, memory) | cookies up / down | ledger writes/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sizing["model"]:
        shards = f"{row['shards']} ({row.get('shards_for_load', '?')}, {row['shards_for_memory']})"
        lines.append(
            f"| {row['rate']:,} | {row['visits_per_s']:,} | {row['logins_per_s']:,} | "
            f"{row['activity_updates_per_s']:,} | {row['keys_millions']:,}M "
            f"({row['tombstones_millions']:,}M tombstones) | {row['memory_gb']:,} GB | "
            f"{row.get('redis_commands_per_s', 0):,} | {shards} | "
            f"{row['cookie_up_mb_per_s']:,} / {row['cookie_down_mb_per_s']:,} MB/s "
            f"({row['cookie_gbit_per_s']} Gbit/s) | {row['ledger_writes_per_s']:,} "
            f"({row['ledger_vs_here']}x this machine's) |"
        )
    return lines


def write(sizing: dict[str, Any], out: Any, stamp: str) -> list[Any]:
    """``sizing.json`` and ``sizing.md`` in ``out`` (the page includes sizing.md)."""
    import json
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "sizing.json", folder / "sizing.md"]
    paths[0].write_text(json.dumps(sizing, indent=1) + "\n")
    paths[1].write_text(f"Measured {stamp}.\n\n" + "\n".join(markdown(sizing)) + "\n")
    return paths
