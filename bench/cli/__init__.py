"""The `bench` command: parse the command line as written, hand over to the subcommand, and turn every user error into
one line (exit 2) and every signal into a clean stop."""

from __future__ import annotations

import sys

from bench.cli.parser import make_parser, parse_command_line
from bench.errors import NoResults, UsageError


class Terminated(BaseException):
    """SIGTERM or SIGHUP (e.g. `kill`, `timeout`, a closed terminal, a scheduler ending the job): unwinds like
    Ctrl-C, so locks and temp files go and a local launcher stops its jobs."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signum)
        self.signum, self.signame = signum, signal.Signals(signum).name


def _on_terminate(signum, frame) -> None:
    raise Terminated(signum)


def _stopped(err: BaseException) -> str:
    n = getattr(err, "stopped_jobs", 0)
    return f"; stopped {n} running job{'s' if n != 1 else ''} and their workers" if n else ""


RESUMES = "an interrupted run resumes from its last epoch on the next 'bench run'"


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = make_parser()
    handled = (signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is threading.main_thread():
        previous = [signal.signal(sig, _on_terminate) for sig in handled]
    else:
        previous = []
    try:
        args = parse_command_line(parser, argv)
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    except NoResults as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"bench: interrupted{_stopped(err)}; {RESUMES}", file=sys.stderr)
        return 130
    except Terminated as err:
        print(f"bench: terminated ({err.signame}){_stopped(err)}; {RESUMES}", file=sys.stderr)
        return 128 + err.signum
    except BrokenPipeError:  # e.g. `bench list | head`
        sys.stderr.close()
        return 0
    finally:
        for sig, handler in zip(handled, previous):
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
