"""The command line: parse arguments, call one command, and turn every error into a message and exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from pipeline import __version__, interrupts
from pipeline.console import Console
from pipeline.errors import PipelineError, SpecError
from pipeline.stages import STAGES

EPILOG = """exit codes: 0 success; 1 a stage failed; 2 invalid spec or usage, nothing ran; 130 interrupted.
plan --detailed-exitcode: 0 no changes, 2 changes pending, 1 error.
status: 0 live and as recorded; 1 down, drifted, unreachable or not deployed; 2 invalid spec or usage."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() stays the only place that picks exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(f"{self.prog}: error: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


class _ArgError(Exception):
    pass


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _add_output_flags(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures (for CI)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON document for machines")


def _duration(text: str) -> float:
    from pipeline.backends.base import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m or 1h") from None


def _add_state_flags(p: argparse.ArgumentParser, *, lock: bool = False) -> None:
    p.add_argument(
        "--state",
        dest="state_url",
        metavar="URL",
        help="where the state lives: `local` or azureblob://ACCOUNT/CONTAINER/PREFIX "
        "(default: $PIPELINE_STATE, else the spec's state block, else .pipeline/ at the project root)",
    )
    if lock:
        p.add_argument(
            "--lock-timeout",
            type=_duration,
            default=0.0,
            metavar="DURATION",
            help="wait this long (30s, 5m) for a lock another run holds, instead of failing at once",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pipeline",
        description="Turn a reviewed YAML spec into a tested, running scoring web service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate",
        help="check specs against the schema and the targets' rules",
        description="Validate specs: every problem of every file, as file:line: field: message.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    _add_output_flags(p)

    p = sub.add_parser(
        "schema", help="print the spec's JSON Schema", description="Print the JSON Schema of pipeline/v1 specs."
    )
    p.add_argument("--markdown", action="store_true", help="print the spec reference as a Markdown table instead")

    p = sub.add_parser(
        "render",
        help="render score.py, myenv.yml and the target's configs",
        description="Render the spec's files into a folder (default build/<name>), without deploying.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", metavar="DIR", help="folder to write into (default: build/<name>)")
    _add_output_flags(p, json_flag=False)

    p = sub.add_parser(
        "plan",
        help="show what run would do, stage by stage, with a field-level diff",
        description="Show, per stage, run or skip and why; for deploy create/update/no-op/replace and the diff.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--detailed-exitcode", action="store_true", help="exit 0 with no changes, 2 with changes pending, 1 on error"
    )
    _add_selection(p)
    _add_state_flags(p)
    _add_output_flags(p)

    p = sub.add_parser(
        "run",
        help="bring the service to the state the spec describes",
        description="Run the stages whose inputs changed: check, fetch, evaluate, render, deploy, smoke, report.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--cleanup", action="store_true", help="delete the service after a successful smoke test (CI mode)")
    p.add_argument(
        "--adopt",
        action="store_true",
        help="take over a service name another spec file owns (the spec was renamed or moved)",
    )
    p.add_argument(
        "--summary",
        metavar="FILE",
        help="append the report's Markdown to FILE, for a CI job summary (default: $GITHUB_STEP_SUMMARY "
        "when it is set)",
    )
    _add_selection(p)
    _add_state_flags(p, lock=True)
    _add_output_flags(p)

    p = sub.add_parser(
        "status",
        help="live health, scoring URI, model, last smoke test, drift",
        description="Probe the deployed service and compare it with its record. Exit codes: 0 the "
        "service is live and matches its record; 1 it is down, drifted, unreachable or not deployed "
        "(--json says which in its state field); 2 invalid spec or usage.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--show-keys", action="store_true", help="print the service's auth keys in full")
    p.add_argument(
        "--uri", action="store_true", help="print only the scoring URI (for scripts); exit 1 if not deployed"
    )
    _add_state_flags(p)
    _add_output_flags(p)

    p = sub.add_parser(
        "delete",
        help="stop and remove the service (keeps the history)",
        description="Stop and remove the deployed service, like the tutorial's service.delete().",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--adopt", action="store_true", help="delete a service whose name another spec file owns")
    _add_state_flags(p, lock=True)
    _add_output_flags(p, json_flag=False)

    p = sub.add_parser(
        "rollback",
        help="bring back an earlier deployment, tested before it takes traffic",
        description="Bring back a kept release (its rendered files, model and spec) by the same gated "
        "procedure as a deploy; `status` lists the releases.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--to", type=int, metavar="N", help="the release to bring back (default: the one before the live one)"
    )
    _add_state_flags(p, lock=True)
    _add_output_flags(p, json_flag=False)

    p = sub.add_parser("logs", help="show the service's own log", description="Show the tail of the service's log.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-n", "--tail", type=int, default=50, metavar="N", help="number of lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    _add_state_flags(p)

    p = sub.add_parser(
        "serve",
        help="run the spec's service in the foreground",
        description="Render and host the spec's scoring service in the foreground until Ctrl-C.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the spec's deploy.local.port)")
    _add_state_flags(p)

    p = sub.add_parser(
        "state",
        help="inspect the state document, or move it to a shared backend",
        description="Show what is recorded for a spec and who holds its lock, or push local state to a backend.",
    )
    verbs = p.add_subparsers(dest="state_command", metavar="VERB", parser_class=_Parser, required=True)
    q = verbs.add_parser(
        "show",
        help="what is recorded, where, and who holds the lock",
        description="Show the state document of a spec: where it lives, its version, the lock, "
        "the stages, the service and the history.",
    )
    q.add_argument("spec", metavar="SPEC")
    _add_state_flags(q)
    _add_output_flags(q)
    q = verbs.add_parser(
        "push",
        help="move the local state to a backend (e.g. azureblob://...)",
        description="Copy the spec's local state document to a backend; the local document then "
        "points there, so nothing goes on writing the old copy.",
    )
    q.add_argument("spec", metavar="SPEC")
    q.add_argument("--to", required=True, metavar="URL", help="the backend, e.g. azureblob://ACCOUNT/CONTAINER/PREFIX")
    q.add_argument("--force", action="store_true", help="replace state the backend already holds for this spec")
    q.add_argument(
        "--lock-timeout",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="wait this long for the locks instead of failing at once",
    )
    _add_output_flags(q)

    p = sub.add_parser(
        "force-unlock",
        help="break the lock of a run that died, naming its holder",
        description="Break the spec's lock whoever holds it (as terraform force-unlock does); "
        "use it only when the holder is known to be gone.",
    )
    p.add_argument("spec", metavar="SPEC")
    _add_state_flags(p)
    _add_output_flags(p)
    return parser


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="run every selected stage even if its inputs did not change")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--only", choices=STAGES, metavar="STAGE", help="run just this stage")
    group.add_argument("--from", dest="from_stage", choices=STAGES, metavar="STAGE", help="start at this stage")
    p.add_argument("--to", dest="to_stage", choices=STAGES, metavar="STAGE", help="stop after this stage")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the return value is the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    console = Console()
    detailed = "--detailed-exitcode" in argv  # plan: 2 means changes pending, so every error must be 1
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "schema":
            from pipeline import spec

            sys.stdout.write(spec.reference() if args.markdown else spec.schema_text())
            return 0
        if getattr(args, "only", None) and args.to_stage:
            raise _ArgError("pipeline: error: --only cannot be combined with --to")
        console = Console(quiet=getattr(args, "quiet", False))
        module = importlib.import_module(f"pipeline.commands.{args.command.replace('-', '_')}")
        with interrupts.installed():
            return int(module.main(args, console))
    except _Exit as exc:
        return exc.status
    except _ArgError as exc:
        console.error(str(exc))
        return 1 if detailed else 2
    except SpecError as exc:
        for message in exc.messages:
            console.error(message)
        return 1 if detailed else exc.exit_code
    except PipelineError as exc:
        console.clear_progress()
        console.error(f"error: {exc}")
        return 1 if detailed else exc.exit_code
    except KeyboardInterrupt:
        console.clear_progress()
        console.error("interrupted")
        return 130
    except BrokenPipeError:
        return 1
    except Exception:  # noqa: BLE001  an unexpected error is a bug: say so, with what a bug report needs
        console.clear_progress()
        console.error("internal error: this is a bug in pipeline; please report it with the traceback below")
        console.error(traceback.format_exc().rstrip())
        return 1


def main_exit() -> None:
    """The console script `pipeline`: the one other place that may end the process."""
    sys.exit(main())
