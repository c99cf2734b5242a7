"""Results: targets, the JSON file, the Markdown tables and the PNG charts.

Every chart carries a footer with the machine (CPU model, cores, RAM) and the versions
(Python, Django, django-redis, redis-py, Redis server, database) the figures come from.
Charts need matplotlib (the ``bench`` extra); without it they are skipped, and said so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINE_LABELS = {
    "resilient": "resilient (this)",
    "cache": "cache",
    "cached_db": "cached_db",
    "signed_cookies": "signed_cookies",
    "db": "db",
}
COLORS = {
    "resilient": "#1f77b4",
    "cache": "#7f7f7f",
    "cached_db": "#ff7f0e",
    "signed_cookies": "#2ca02c",
    "db": "#ff7f0e",
}
STATES = ("healthy", "killed", "hung")
STATE_LABELS = {
    "healthy": "healthy",
    "killed": "killed (refused)",
    "hung": "hung (SIGSTOP)",
}
OP_LABELS = {
    "load": "load",
    "save": "save",
    "create": "create",
    "cycle_key": "cycle_key",
    "flush": "flush",
    "encode": "encode",
    "decode": "decode",
    "load_down": "load, Redis down",
}
HUNG_P99_LIMIT_MS = 50.0
CHARTS = ("ops_ratios.png", "http_throughput.png", "http_p99.png", "cleanup.png")


# -- targets --------------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    text: str
    limit: str
    value: float | None
    unit: str
    met: bool | None


def _op(results: dict[str, Any], op: str, engine: str) -> dict[str, Any] | None:
    for row in results.get("ops", {}).get("results", []):
        if row["op"] == op and row["engine"] == engine:
            return dict(row)
    return None


def _http(results: dict[str, Any], state: str, view: str, engine: str) -> dict[str, Any] | None:
    http = results.get("http", {})
    tools = http.get("config", {}).get("tools", [])
    for tool in tools:
        for row in http.get("summary", []):
            if (row["engine"], row["state"], row["view"], row["tool"]) == (
                engine,
                state,
                view,
                tool,
            ):
                return dict(row)
    return None


def targets(results: dict[str, Any]) -> list[Target]:
    """The issue's targets, met (True), missed (False) or not measured (None)."""
    found: list[Target] = []
    for op, limit, text in (
        ("load", 1.0, "cached load vs Django's `cache` engine (median)"),
        ("save", 0.95, "save (load + modify + save) vs Django's `cache` engine (median)"),
    ):
        row = _op(results, op, "resilient")
        value = row["ratio"] if row else None
        met = None if value is None else value <= limit
        found.append(Target(f"{op}_ratio", text, f"≤ {limit:.2f}x", value, "x", met))
    for view in ("read", "write"):
        row = _http(results, "hung", view, "resilient")
        value = row["p99_ms"] if row else None
        met = None if value is None else value <= HUNG_P99_LIMIT_MS
        found.append(
            Target(
                f"hung_p99_{view}",
                f"p99 latency while Redis hangs, breaker open ({view} view)",
                f"≤ {HUNG_P99_LIMIT_MS:.0f} ms",
                value,
                "ms",
                met,
            )
        )
    for view in ("read", "write"):
        row = _http(results, "killed", view, "resilient")
        value = row["rps_vs_healthy"] if row else None
        met = None if value is None else value >= 0.9
        found.append(
            Target(
                f"down_rps_{view}",
                f"requests/s while Redis is down vs healthy ({view} view)",
                "≥ 0.90x",
                value,
                "x",
                met,
            )
        )
    return found


# -- Markdown -------------------------------------------------------------------------------


def stamp(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = results["versions"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM | Python {v['python']}, "
        f"Django {v['django']}, django-redis {v['django_redis']}, redis-py {v['redis_py']}, "
        f"Redis {v['redis_server']}, {v['database']} | {results['mode']} run "
        f"{results['started_at'][:16].replace('T', ' ')} UTC"
    )


def _num(value: float, digits: int = 0) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(digits, 1)}f}"


def _fmt_target(target: Target) -> str:
    if target.value is None:
        return "not measured"
    if target.unit == "x":
        return f"{target.value:.2f}x"
    return f"{target.value:.1f} {target.unit}"


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = [
        f"Measured {results['started_at'][:16].replace('T', ' ')} UTC ({results['mode']} run, "
        f"{results['duration_s']:.0f} s) on {stamp(results).split(' | ')[0]}; "
        + ", ".join(
            f"{name} {results['versions'][key]}"
            for name, key in (
                ("Python", "python"),
                ("Django", "django"),
                ("django-redis", "django_redis"),
                ("redis-py", "redis_py"),
                ("Redis", "redis_server"),
                ("gunicorn", "gunicorn"),
                ("wrk", "wrk"),
            )
        )
        + f", {results['versions']['database']}; "
        f"django-resilient-sessions {results['versions']['django_resilient_sessions']}.",
        "",
        "| target | limit | measured | |",
        "| --- | --- | --- | --- |",
    ]
    for target in results["targets"]:
        t = Target(**target)
        verdict = {True: "met", False: "**missed**", None: "—"}[t.met]
        lines.append(f"| {t.text} | {t.limit} | {_fmt_target(t)} | {verdict} |")
    if "ops" in results:
        lines += ["", *_ops_table(results["ops"])]
    if "http" in results:
        lines += ["", *_http_table(results["http"])]
    if "cleanup" in results:
        lines += ["", *_cleanup_table(results["cleanup"])]
    if "adoption" in results:
        from benchmarks import adoption

        lines += ["", *adoption.table(results["adoption"])]
    if "cluster" in results:
        from benchmarks import cluster

        lines += ["", *cluster.markdown(results["cluster"])]
    if "sizing" in results:
        lines += ["", "Sizing measurements and model: `sizing.md` (docs/sizing.md)."]
    for note in _notes(results):
        lines += ["", note]
    if results.get("profiles"):
        names = ", ".join(f"`{name}`" for name in results["profiles"])
        lines += ["", f"Profiles (written next to these results): {names}."]
    return "\n".join(lines) + "\n"


def _ops_table(ops: dict[str, Any]) -> list[str]:
    engines = ops["engines"]
    n = max((row["n"] for row in ops["results"]), default=0)
    lines = [
        f"Per operation, in process (median µs, p99 µs, ratio of medians to Django's `cache` "
        f"engine; up to {n:,} interleaved repetitions each):",
        "",
        "| operation | " + " | ".join(f"`{e}`" for e in engines) + " |",
        "| --- |" + " --- |" * len(engines),
    ]
    for op in OP_LABELS:
        rows = {r["engine"]: r for r in ops["results"] if r["op"] == op}
        if not rows:
            continue
        cells = []
        for engine in engines:
            row = rows.get(engine)
            if row is None:
                cells.append("")
                continue
            outcome = row.get("outcome", "logged in")
            if op == "load_down" and outcome != "logged in":
                cells.append(f"N/A: {outcome}")
                continue
            ratio = "" if row["ratio"] is None else f" · **{row['ratio']:.2f}x**"
            cells.append(f"{_num(row['median_us'], 1)} · p99 {_num(row['p99_us'], 1)}{ratio}")
        label = OP_LABELS[op]
        if op in ops.get("op_baseline", {}):
            label += f" (ratio to `{ops['op_baseline'][op]}`)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _http_cell(row: dict[str, Any]) -> str:
    cell = f"{_num(row['rps'])}/s · p50 {_num(row['p50_ms'], 1)} · p99 {_num(row['p99_ms'], 1)} ms"
    total = max(row["requests"], 1)
    if row["non_2xx"]:
        cell += f" · **{row['non_2xx'] / total:.0%} errors**"
    if row["logged_out"]:
        cell += f" · **{row['logged_out'] / total:.0%} logged out**"
    if row.get("timeouts"):
        cell += f" · {row['timeouts']} timeouts"
    return cell


def _http_table(http: dict[str, Any]) -> list[str]:
    config = http["config"]
    summary = http["summary"]
    tools = config["tools"]
    engines = list(dict.fromkeys(row["engine"] for row in summary))
    warmup = ", after a warm-up round" if config["warmup_s"] else ""
    lines = [
        f"Through HTTP (gunicorn, {config['workers']} sync workers per engine and Redis state; "
        f"{' and '.join(tools)} with {config['connections']} connections; each cell sums "
        f"{config['rounds']} slices of {config['slice_s']} s interleaved with all the others"
        f"{warmup}; requests/s, latency in ms):",
        "",
        "| view | Redis | " + " | ".join(f"`{e}`" for e in engines) + " |",
        "| --- | --- |" + " --- |" * len(engines),
    ]
    for tool in tools:
        for view in ("read", "write"):
            for state in STATES:
                rows = {
                    r["engine"]: r
                    for r in summary
                    if (r["view"], r["state"], r["tool"]) == (view, state, tool)
                }
                if not rows:
                    continue
                cells = [_http_cell(rows[e]) if e in rows else "" for e in engines]
                label = view if len(tools) == 1 else f"{view} ({tool})"
                lines.append(f"| {label} | {STATE_LABELS[state]} | " + " | ".join(cells) + " |")
    return lines


def _cleanup_table(cleanup: dict[str, Any]) -> list[str]:
    lines = [
        f"`clearsessions` over {cleanup['rows']:,} expired rows ({cleanup['database']}; each "
        "command in its own process; startup = the same command on an empty table):",
        "",
        "| engine | table | rows | wall time | peak RSS | startup | rows left |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in cleanup["runs"]:
        lines.append(
            f"| `{run['engine']}` | `{run['table']}` | {run['rows']:,} | {run['wall_s']:.2f} s | "
            f"{run['max_rss_mb']:.0f} MB | {run['startup_wall_s']:.2f} s, "
            f"{run['startup_max_rss_mb']:.0f} MB | {run['rows_left']:,} |"
        )
    return lines


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    sizes = results.get("ops", {}).get("sizes")
    if sizes:
        notes.append(
            f"Session: a logged-in user plus {sizes['app_data_json']} bytes of app data (JSON); "
            f"our backup token {sizes.get('resilient_encoded', '?')} characters, the "
            f"`signed_cookies` cookie {sizes.get('signed_cookies_encoded', '?')}. "
            "`load_down`: redis-server killed, our breaker open; Django's `cache` engine "
            "answers an empty session there, and `cached_db` reads the database and then "
            "raises from its unguarded `cache.set()` in `load()`."
        )
    if "http" in results:
        config = results["http"]["config"]
        notes.append(
            "Each load generator connection logs in on its own session and keeps a cookie "
            "jar, as a browser does: every write carries the backup the previous write "
            "answered, and while Redis is down each request is served from its session's "
            "newest backup (a connection whose last answer a slice's end cut off logs in "
            f"again before the next slice: {results['http'].get('revived', 0)} times). "
            "Redis socket timeouts "
            f"{config['socket_timeout_s']:g} s (as in the Quick start), breaker cool-down "
            f"{config['breaker_cooldown_s']:g} s and probe timeout "
            f"{config['breaker_probe_timeout_s']:g} s (the engine's defaults). "
            '"errors": non-2xx answers; "logged out": 2xx answers to a request whose login '
            "was lost."
        )
    return notes


# -- charts ---------------------------------------------------------------------------------


def charts(results: dict[str, Any], out: Path) -> list[str]:
    """Draw the PNG charts into ``out``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    made = []
    if "ops" in results:
        _ops_chart(results, out / CHARTS[0])
        made.append(CHARTS[0])
    if "http" in results:
        _http_chart(results, out / CHARTS[1], "rps", "requests per second", log=False)
        _http_chart(results, out / CHARTS[2], "p99_ms", "p99 latency (ms, log scale)", log=True)
        made += [CHARTS[1], CHARTS[2]]
    if "cleanup" in results:
        _cleanup_chart(results, out / CHARTS[3])
        made.append(CHARTS[3])
    return made


def _finish(fig: Any, results: dict[str, Any], path: Path) -> None:
    fig.text(0.005, 0.005, stamp(results), fontsize=6.5, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _ops_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    ops = results["ops"]
    engines = ops["engines"]
    names = [op for op in OP_LABELS if any(r["op"] == op for r in ops["results"])]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        xs, ys = [], []
        for j, op in enumerate(names):
            row = next(r for r in ops["results"] if r["op"] == op and r["engine"] == engine)
            value = row["ratio"]
            if value is None:
                continue
            x = j + (i - (len(engines) - 1) / 2) * width
            xs.append(x)
            ys.append(value)
            outcome = row.get("outcome", "logged in")
            if op == "load_down" and outcome != "logged in":
                label = "error" if outcome.startswith("raises") else "logged out"
                ax.text(x, value * 1.08, label, rotation=90, ha="center", va="bottom", fontsize=7)
        ax.bar(xs, ys, width, label=ENGINE_LABELS[engine], color=COLORS[engine])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ratios = [r["ratio"] for r in ops["results"] if r["ratio"]] or [1.0]
    ax.set_ylim(min(ratios) / 1.5, max(ratios) * 4)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [
            OP_LABELS[op] + (f"\n(vs {ops['op_baseline'][op]})" if op in ops["op_baseline"] else "")
            for op in names
        ],
        fontsize=8,
    )
    ax.set_ylabel("median time / Django's cache engine (log)")
    ax.set_title("Per operation: ratio to Django's cache engine (lower is faster)")
    ax.legend(fontsize=8, ncols=4)
    _finish(fig, results, path)


def _http_chart(results: dict[str, Any], path: Path, field: str, ylabel: str, log: bool) -> None:
    import matplotlib.pyplot as plt

    http = results["http"]
    tool = http["config"]["tools"][0]
    summary = [r for r in http["summary"] if r["tool"] == tool]
    engines = list(dict.fromkeys(r["engine"] for r in summary))
    states = [s for s in STATES if any(r["state"] == s for r in summary)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    width = 0.8 / max(len(engines), 1)
    for ax, view in zip(axes, ("read", "write"), strict=True):
        for i, engine in enumerate(engines):
            for j, state in enumerate(states):
                row = next(
                    (
                        r
                        for r in summary
                        if (r["engine"], r["state"], r["view"]) == (engine, state, view)
                    ),
                    None,
                )
                if row is None:
                    continue
                x = j + (i - (len(engines) - 1) / 2) * width
                value = max(row[field], 1e-3)
                ax.bar(
                    x,
                    value,
                    width,
                    color=COLORS[engine],
                    label=ENGINE_LABELS[engine] if j == 0 else None,
                )
                total = max(row["requests"], 1)
                flag = ""
                if row["non_2xx"] / total >= 0.01:
                    flag = f"{row['non_2xx'] / total:.0%} err"
                elif row["logged_out"] / total >= 0.01:
                    flag = f"{row['logged_out'] / total:.0%} out"
                if flag:
                    y = value * (1.15 if log else 1.0) + (0 if log else 5)
                    ax.text(x, y, flag, rotation=90, ha="center", va="bottom", fontsize=7)
        values = [r[field] for r in summary if r[field] > 0] or [1.0]  # shared y axis
        if log:
            ax.set_ylim(min(values) / 1.5, max(values) * 6)
        else:
            ax.set_ylim(0, max(values) * 1.2)
        if field == "p99_ms" and "hung" in states:
            ax.axhline(HUNG_P99_LIMIT_MS, color="red", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(states)))
        ax.set_xticklabels([STATE_LABELS[s] for s in states], fontsize=8)
        ax.set_title(f"{view} view")
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    what = "throughput" if field == "rps" else "p99 latency (red: 50 ms target while Redis hangs)"
    fig.suptitle(f"HTTP {what} by Redis state", fontsize=11)
    _finish(fig, results, path)


def _cleanup_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    cleanup = results["cleanup"]
    runs = cleanup["runs"]
    labels = [f"{ENGINE_LABELS[r['engine']]}\n{r['table']}" for r in runs]
    colors = [COLORS["resilient"] if r["engine"] == "resilient" else COLORS["db"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, field, base, unit in (
        (left, "wall_s", "startup_wall_s", "wall time (s)"),
        (right, "max_rss_mb", "startup_max_rss_mb", "peak RSS (MB)"),
    ):
        values = [r[field] for r in runs]
        ax.bar(labels, values, color=colors)
        ax.bar(labels, [r[base] for r in runs], color="white", alpha=0.45, hatch="//")
        for x, value in enumerate(values):
            ax.text(x, value, f"{value:,.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    left.set_title("clearsessions wall time (hatched: same command, empty table)", fontsize=9)
    right.set_title("peak resident memory (hatched: empty table)", fontsize=9)
    fig.suptitle(
        f"clearsessions over {cleanup['rows']:,} expired rows ({cleanup['database']})",
        fontsize=11,
    )
    _finish(fig, results, path)


# -- files ----------------------------------------------------------------------------------


def write(results: dict[str, Any], out: Path, run_name: str) -> list[Path]:
    """Write ``<run_name>.json``, ``latest.json``, ``latest.md`` and the charts."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        results["charts"] = charts(results, out)
    except ImportError as error:
        results["charts"] = []
        results["charts_skipped"] = f"matplotlib is not installed ({error})"
    text = json.dumps(_clean(results), indent=1, sort_keys=False) + "\n"
    paths = [out / f"{run_name}.json", out / "latest.json", out / "latest.md"]
    paths[0].write_text(text)
    paths[1].write_text(text)
    paths[2].write_text(markdown(results))
    extra = results["charts"] + results.get("profiles", [])
    return paths + [out / name for name in extra]


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
