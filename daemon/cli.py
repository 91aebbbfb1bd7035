"""``hubd``: the daemon's command line (run, check-config, demo)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daemon import __version__
from daemon.config import EX_CONFIG, load_config
from daemon.errors import ConfigError, DiskFullError, HubError, StateLockedError, StateUnusableError

# Exit statuses of ``hubd run`` besides 0 (stopped) and 1 (crashed; systemd restarts it):
# EX_CONFIG (78) for anything an operator must fix first (config, a damaged or newer database,
# a state directory hubd cannot write), which systemd does not restart (RestartPreventExitStatus);
# EX_TEMPFAIL (75) when a full disk stops a migration: systemd tries again after RestartSec.
EX_TEMPFAIL = 75


def default_config_path() -> Path:
    conf_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    if conf_dir:
        return Path(conf_dir.split(":")[0]) / "config.toml"
    return Path("config.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubd", description="bisnesmedia integration hub daemon (1C UT 11 ↔ МойСклад)"
    )
    parser.add_argument("--version", action="version", version=f"hubd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGTERM")
    run.add_argument("--config", type=Path, default=None, help="path to config.toml")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path", nargs="?", type=Path, default=None)
    demo = sub.add_parser(
        "demo", help="run the hub against the built-in sandbox emulators with demo data"
    )
    demo.add_argument("--once", action="store_true", help="exit after the summary")
    demo.add_argument("--items", type=int, default=300, help="demo data set size")
    demo.add_argument("--state-dir", type=Path, default=None, help="keep state here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            path = args.path or default_config_path()
            config = load_config(path)
            targets = ", ".join(t.warehouse for t in config.replenishment.targets)
            print(f"{path}: OK (targets: {targets}; jobs: {', '.join(config.jobs)})")
            return 0
        if args.command == "run":
            from daemon.app import run_daemon

            return run_daemon(args.config or default_config_path())
        if args.command == "demo":
            from daemon.demo import run_demo

            return run_demo(once=args.once, items=args.items, state_dir=args.state_dir)
    except ConfigError as exc:
        print(f"hubd: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StateLockedError as exc:
        # 78 as for a bad config: restarting cannot help until an operator acts
        print(f"hubd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StateUnusableError as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except DiskFullError as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except HubError as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
