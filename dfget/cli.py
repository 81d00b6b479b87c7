"""``dfget``: command-line arguments -> ``DownloadOptions`` (``dfget.config``) -> ``download``.

This module only parses, reports and maps outcomes to exit codes; the download itself is
``dfget.engine.download_sync``. Output: a live progress display on stderr when stderr is a
terminal and ``--quiet`` is not given, one summary line on stderr at the end, errors as one
``dfget: <message>`` line. stdout stays empty.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from dfget import errors
from dfget.config import SETTINGS, UiOptions, find_config_file, load, options_from
from dfget.options import DownloadOptions, DownloadResult, ProgressReport
from peerwire.settings import ArgumentParser, SettingsError

if TYPE_CHECKING:
    from rich.console import Console

# asyncio, rich and the engine are imported when a download starts: ``dfget --help`` and a bad
# argument answer without them (about half of the command's start-up).

INTERRUPTED_MESSAGE = (
    "dfget: interrupted; verified pieces kept beside the output, run the same command to resume"
)

_EXIT_CODES_HELP = f"""\
exit codes:
  {errors.EXIT_OK:<3}  the file is at PATH, complete and verified
  {errors.EXIT_ERROR:<3}  local error (disk full, permission denied, ...) or internal error
  {errors.EXIT_USAGE:<3}  bad arguments or configuration
  {errors.EXIT_DIGEST_MISMATCH:<3}  the file's sha256 is not --digest; nothing written at PATH
  {errors.EXIT_ORIGIN:<3}  the origin refused or failed (its HTTP status is in the message)
  {errors.EXIT_TIMEOUT:<3}  --timeout passed before the file was complete
  {errors.EXIT_NO_PEERS:<3}  the swarm cannot deliver and --no-back-to-source was given
  {errors.EXIT_INTERRUPTED:<3}  interrupted (Ctrl-C, SIGTERM); the same command resumes

Each option --some-name is also the environment variable DFGET_SOME_NAME and the key
some_name of a TOML file (--config, else $DFGET_CONFIG, else ~/.config/dfget/config.toml;
top-level keys or a [dfget] table). Flags win over the environment over the file; an empty
variable is unset. The former keys headers and back_to_source (now no_back_to_source, the
opposite) still work. --print-config shows every setting and where it came from.

example:
  dfget https://example.com/model.bin -O model.bin --tracker http://tracker:6969 --rate 50M
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, told the terminal's width here: it would import shutil (and with it bz2 and
    lzma) to ask, a tenth of what ``dfget --help`` costs."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            columns = 80
        super().__init__(prog, width=max(columns - 2, 20))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dfget",
        description=(
            "Download one URL through the P2P swarm: peers trade verified pieces, the origin\n"
            "serves each piece about once, and PATH appears only when the file is complete and\n"
            "verified. Without a tracker, or when the swarm fails, it downloads from the origin\n"
            "directly (unless --no-back-to-source)."
        ),
        epilog=_EXIT_CODES_HELP,
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add("url", metavar="URL", nargs="?", help="http:// or https:// URL to download")
    add(
        "-O",
        "--output",
        metavar="PATH",
        help="where to save, e.g. -O /data/model.bin; a directory keeps the URL's file name "
        "(default: the last segment of the URL's path in the current directory, index.html "
        "when it is empty)",
    )
    SETTINGS.add_arguments(parser)
    add("-v", "--verbose", action="count", default=0, help="more logging: -v info, -vv debug")
    return parser


def _download_sync(
    options: DownloadOptions, *, on_progress: Callable[[ProgressReport], None] | None = None
) -> DownloadResult:
    """The host's dfdaemon when one runs (its socket exists), else the engine in-process;
    imported when a download starts so that ``dfget --help`` stays quick."""
    from dfget.handoff import DaemonUnavailable, daemon_socket, download_sync_via_daemon

    socket = daemon_socket()
    if socket is not None:
        try:
            return download_sync_via_daemon(socket, options, on_progress)
        except DaemonUnavailable as exc:
            logging.getLogger("dfget").warning(
                "dfdaemon socket %s does not answer (%s): downloading in-process", socket, exc
            )
    from dfget.engine import download_sync

    return download_sync(options, on_progress=on_progress)


def _configure_logging(verbose: int, console: Console | None) -> None:
    """-v info, -vv debug, warnings otherwise; through the display's console when there is one."""
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dfget: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level(verbose), handlers=[handler])


def log_level(verbose: int) -> int:
    """Warnings by default, -v info, -vv (or more) debug."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[min(max(verbose, 0), 2)]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the download like Ctrl-C does, so verified pieces are kept aside."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def forward(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(options: DownloadOptions, ui: UiOptions, console: Console | None = None) -> int:
    """Download with the display the terminal allows; report; return the exit code.

    ``console`` is where the progress display goes (stderr by default); it is only used when
    it is a terminal and ``--quiet`` is not given.
    """
    import asyncio

    from rich.console import Console

    from dfget.progress import ProgressDisplay, summary_line

    console = console if console is not None else Console(stderr=True)
    show_progress = console.is_terminal and not ui.quiet
    _configure_logging(ui.verbose, console if show_progress else None)
    try:
        with _sigterm_as_interrupt():
            if show_progress:
                with ProgressDisplay(console, label=options.output.name) as display:
                    result = _download_sync(options, on_progress=display.update)
            else:
                result = _download_sync(options)
    except errors.DownloadError as exc:
        print(f"dfget: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"dfget: {exc}", file=sys.stderr)
        return errors.EXIT_ERROR
    except ValueError as exc:
        print(f"dfget: {exc}", file=sys.stderr)
        return errors.EXIT_USAGE
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    print(summary_line(result), file=sys.stderr)
    return errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    environ = os.environ
    try:
        args = build_parser().parse_args(argv)
        loaded, flags = load(args, environ, find_config_file(args.config, environ))
        for notice in loaded.notices:
            print(f"dfget: {notice}", file=sys.stderr)
        if args.print_config:
            print("\n".join(loaded.describe({})))
            return errors.EXIT_OK
        options, ui = options_from(loaded, flags)
    except SettingsError as exc:
        print(f"dfget: {exc}", file=sys.stderr)
        return errors.EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else errors.EXIT_USAGE
    return run(options, ui)


if __name__ == "__main__":
    sys.exit(main())
