"""Command line of the chaos package: ``python -m chaos [run|cluster|fuzz] [options]``."""

from __future__ import annotations

import argparse
import json
import sys

from chaos.infra import postgres_available


def _db(value: str) -> str:
    if value == "auto":
        return "postgres" if postgres_available() else "sqlite"
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="fault and load run (default)")
    _run_arguments(
        run,
        ", ".join(_faults()) + " (the last ones only when named: they show open engine findings)",
        "full 50, short 10",
        "drs_chaos",
    )
    cluster = sub.add_parser(
        "cluster", help="the fault and load run against a 3-master, 3-replica Redis Cluster"
    )
    _run_arguments(cluster, ", ".join(_cluster_faults()), "full 50, short 40", "drs_chaos_cluster")

    fuzz = sub.add_parser("fuzz", help="HTTP fuzz of session and backup cookies")
    fuzz.add_argument("--count", type=int, default=12_000, help="requests (short: 1500)")
    fuzz.add_argument("--short", action="store_true", help="the quick form run by make test")
    fuzz.add_argument("--db", choices=("sqlite", "postgres", "auto"), default="sqlite")
    fuzz.add_argument("--threads", type=int, default=4)
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--pg-name", default="drs_chaos_fuzz")
    fuzz.add_argument("--keep", action="store_true", help="keep the logs directory")
    return parser


def _run_arguments(run: argparse.ArgumentParser, faults: str, users: str, pg_name: str) -> None:
    """The options of a fault and load run (``run`` and ``cluster``)."""
    run.add_argument("--short", action="store_true", help="the quick form run by make test")
    run.add_argument("--users", type=int, help=f"virtual users ({users})")
    run.add_argument(
        "--duration", type=float, help="seconds of faults, roughly (full 150, short 30)"
    )
    run.add_argument(
        "--db",
        choices=("sqlite", "postgres", "auto"),
        help="database (full: postgres, short: sqlite; auto: postgres when reachable)",
    )
    run.add_argument(
        "--faults",
        help="comma-separated subset of: " + faults,
    )
    run.add_argument("--cooldown", type=float, default=1.0, help="BREAKER_COOLDOWN (s)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--pg-name", default=pg_name, help="PostgreSQL database to create")
    run.add_argument(
        "--no-known-bugs",
        action="store_true",
        help="fail on known engine bugs too (see chaos.KNOWN_BUGS)",
    )
    run.add_argument(
        "--logout-rate",
        type=float,
        help="chance a step logs out (full 0.01, short 0.02); 0 also stops the logouts "
        "each fault asks of a few users",
    )
    run.add_argument("--keep", action="store_true", help="keep the logs directory")
    run.add_argument(
        "--timeline",
        default="test-artifacts/chaos-timeline.png",
        help="PNG chart of the run (requests/s, latency, share from backups, breakers, "
        "faults shaded); '' for none",
    )
    run.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="set RESILIENT_SESSIONS[KEY] on the app servers, e.g. FAIL_CLOSED=false "
        "(a self-test: that run must fail)",
    )


def _faults() -> tuple[str, ...]:
    from chaos.run import EXTRA_FAULTS, FAULTS

    return FAULTS + EXTRA_FAULTS


def _cluster_faults() -> tuple[str, ...]:
    from chaos.cluster import CLUSTER_FAULTS

    return CLUSTER_FAULTS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "fuzz":
        from chaos import fuzz

        count = 1500 if args.short and args.count == 12_000 else args.count
        return fuzz.main(
            fuzz.FuzzOptions(
                count=count,
                db=_db(args.db),
                threads=args.threads,
                seed=args.seed,
                pg_name=args.pg_name,
                keep=args.keep,
            )
        )
    from chaos.run import EXTRA_FAULTS, FAULTS, SHORT_FAULTS, Options

    if args.command == "cluster":
        from chaos import cluster

        known: tuple[str, ...] = cluster.CLUSTER_FAULTS
        short: tuple[str, ...] = cluster.SHORT_CLUSTER_FAULTS
    else:
        known, short = FAULTS + EXTRA_FAULTS, SHORT_FAULTS
    if args.faults:
        faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        unknown = [f for f in faults if f not in known]
        if unknown:
            print(f"unknown faults: {', '.join(unknown)}", file=sys.stderr)
            return 2
    elif args.command == "cluster":
        faults = short if args.short else cluster.CLUSTER_FAULTS
    else:
        faults = short if args.short else FAULTS
    engine_options = {}
    for item in args.engine_option:
        key, _, value = item.partition("=")
        try:
            engine_options[key] = json.loads(value)
        except ValueError:
            engine_options[key] = value
    short_users = 40 if args.command == "cluster" else 10
    options = Options(
        users=args.users or (short_users if args.short else 50),
        duration=args.duration or (30.0 if args.short else 150.0),
        db=_db(args.db or ("sqlite" if args.short else "postgres")),
        faults=faults,
        cooldown=args.cooldown,
        seed=args.seed,
        think=(0.03, 0.12) if args.short else (0.15, 0.45),
        logout_rate=args.logout_rate
        if args.logout_rate is not None
        else (0.02 if args.short else 0.01),
        known_bugs=not args.no_known_bugs,
        keep=args.keep,
        pg_name=args.pg_name,
        engine_options=engine_options,
        timeline=args.timeline,
    )
    if args.command == "cluster":
        return cluster.main(options)
    from chaos.run import main as run_main

    return run_main(options)


if __name__ == "__main__":
    sys.exit(main())
