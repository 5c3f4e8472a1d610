"""``e2ee sim``: run the multi-client simulation against a relay with faults.

Starts a relay (SQLite by default, ``--db`` for PostgreSQL, ``--redis`` for Redis), a
fault proxy in front of it and client processes hosting every simulated device, runs a
seeded workload with relay and client SIGKILLs and dropped connections, and checks at
the end that every message reached every device it was meant for exactly once,
decrypted, in acceptance order, and that no plaintext canary reached the relay's
database, logs or Redis traffic.

Examples:

  e2ee sim                                   # 50 users x 2 devices, 5,000 messages
  e2ee sim --users 10 --messages 500 --relay-kills 1 --client-kills 1
  e2ee sim --db postgresql://postgres@127.0.0.1:5432/postgres --redis redis://127.0.0.1:6379/0
  e2ee sim --report out.json --plot out.png
  e2ee sim --replay sim-work/sim-log.json    # the schedule of a failed run, again

Exit status: 0 when every invariant held, 1 when one did not (the summary says which,
and the event log of the run is written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Final

from .report import PlotUnavailable, Progress, SimReport, summary_table, write_plot
from .sim import SimError, load_replay, run_simulation
from .workload import ConfigError, Schedule, SimConfig

__all__ = ["SimCommand", "command"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


class SimCommand:
    """The ``e2ee sim`` subcommand."""

    name = "sim"
    help = "run many clients against a relay with faults and check nothing is lost or leaked"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Every setting of :class:`SimConfig`, plus the outputs."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.description = __doc__
        defaults = SimConfig(seed=0)
        add = parser.add_argument
        add("--seed", type=int, help="the schedule's seed (default: random, printed)")
        add("--users", type=_positive_int, default=defaults.users, help="simulated users")
        add(
            "--devices",
            type=_positive_int,
            default=defaults.devices_per_user,
            help="devices per user (the first registers, the others are linked)",
        )
        add("--messages", type=_positive_int, default=defaults.messages, help="1:1 messages")
        add(
            "--conversations",
            type=_positive_int,
            default=defaults.conversations,
            help="1:1 conversations per user",
        )
        add(
            "--rate",
            type=float,
            default=defaults.rate,
            help="messages handed to the clients per second (0: as fast as they go)",
        )
        add(
            "--size",
            type=_positive_int,
            nargs=2,
            metavar=("MIN", "MAX"),
            default=(defaults.min_size, defaults.max_size),
            help="message body sizes, bytes",
        )
        add(
            "--db",
            metavar="URL",
            help="a PostgreSQL server (a fresh database is created on it and dropped); "
            "default: a SQLite file in the work directory",
        )
        add("--redis", metavar="URL", help="Redis for the relay's notifications")
        add(
            "--relay-kills",
            type=_positive_int,
            default=defaults.relay_kills,
            help="relay SIGKILLs (each restarted on a fresh port behind the proxy)",
        )
        add(
            "--client-kills",
            type=_positive_int,
            default=defaults.client_kills,
            help="client process SIGKILLs (each restarted from its stores)",
        )
        add(
            "--disconnects",
            type=_positive_int,
            default=defaults.disconnects,
            help="connections dropped by the proxy",
        )
        add(
            "--duplicate",
            type=float,
            default=defaults.duplicate_probability,
            metavar="P",
            help="probability that the proxy delivers a message twice",
        )
        add(
            "--delay-ms",
            type=float,
            default=defaults.delay_ms,
            help="delay the proxy adds to every message",
        )
        add(
            "--workers",
            type=_positive_int,
            default=defaults.workers,
            help="client processes hosting the devices",
        )
        add(
            "--timeout",
            type=float,
            default=defaults.timeout_s,
            help="bound of the whole run, seconds",
        )
        add(
            "--workdir",
            type=Path,
            help="keep the relay's and clients' files and logs here (default: temporary)",
        )
        add("--report", type=Path, metavar="OUT.json", help="write the report as JSON")
        add(
            "--plot",
            type=Path,
            metavar="OUT.png",
            help="latency histogram and throughput over time (needs e2ee[sim])",
        )
        add(
            "--replay",
            type=Path,
            metavar="LOG.json",
            help="run the schedule of a failed run's event log again (its settings win)",
        )
        add("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        """Run the simulation; 0 if every invariant held, 1 otherwise."""
        schedule: Schedule | None = None
        try:
            if args.replay is not None:
                config, schedule = load_replay(args.replay)
            else:
                config = SimConfig(
                    seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
                    users=args.users,
                    devices_per_user=args.devices,
                    messages=args.messages,
                    conversations=args.conversations,
                    rate=args.rate,
                    min_size=args.size[0],
                    max_size=args.size[1],
                    database=args.db,
                    redis_url=args.redis,
                    relay_kills=args.relay_kills,
                    client_kills=args.client_kills,
                    disconnects=args.disconnects,
                    duplicate_probability=args.duplicate,
                    delay_ms=args.delay_ms,
                    workers=min(args.workers, args.users),
                    timeout_s=args.timeout,
                )
        except ConfigError as exc:
            print(f"e2ee sim: error: {exc}", file=sys.stderr)
            return 2
        print(f"e2ee sim: seed {config.seed}", flush=True)
        if args.workdir is not None:
            return self._run_in(args, config, schedule, args.workdir)
        with tempfile.TemporaryDirectory(prefix="e2ee-sim-") as tmp:
            return self._run_in(args, config, schedule, Path(tmp))

    @staticmethod
    def _run_in(
        args: argparse.Namespace, config: SimConfig, schedule: Schedule | None, workdir: Path
    ) -> int:
        def bar(total: int) -> Progress:
            return Progress(total, label="deliveries")

        event_log = None
        if args.workdir is None:  # the temporary directory goes: keep the log beside us
            event_log = Path.cwd() / f"sim-log-{config.seed}.json"
        try:
            run = asyncio.run(
                run_simulation(
                    config,
                    workdir,
                    schedule=schedule,
                    progress=None if args.no_progress else bar,
                    event_log=event_log,
                )
            )
        except (SimError, ConfigError, OSError) as exc:
            print(f"e2ee sim: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        report: SimReport = run.report
        print(summary_table(report), flush=True)
        if args.report is not None:
            report.write(args.report)
            print(f"report: {args.report}")
        if args.plot is not None:
            try:
                write_plot(report, args.plot)
            except PlotUnavailable as exc:
                print(f"e2ee sim: error: {exc}", file=sys.stderr)
                return 1
            print(f"plot: {args.plot}")
        if run.event_log is not None:
            print(f"event log: {run.event_log} (rerun: e2ee sim --replay {run.event_log})")
        return 0 if report.passed else 1


command: Final = SimCommand()
"""The entry point of ``e2ee sim`` (group ``e2ee.commands``)."""
