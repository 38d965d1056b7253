"""The ``entrykit`` command: options -> Settings -> one library call -> exit code.

``entrykit CMD...`` and ``entrykit run -- CMD...`` start every container, so they skip
click (40 ms to import) and go straight to the pipeline; every other form goes through click.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO, cast

from entrykit import __version__, logs
from entrykit.errors import (
    EXIT_NOT_AT_TARGET,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    EntrykitError,
    Stopped,
)
from entrykit.options import (
    fast_run_command,
    named_as_typed,
    once_args,
    positive_seconds,
)
from entrykit.settings import Settings, unknown_variables, wanted_logging

if TYPE_CHECKING:
    import click

USAGE = """\
usage: entrykit CMD [ARGS...]                 run the steps, then exec CMD
       entrykit run [--] [CMD [ARGS...]]      the same; without CMD, exit 0 after the steps
       entrykit once NAME [--timeout S] -- CMD [ARGS...]   run CMD under the replica lock NAME
       entrykit wait|migrate|prefetch|secrets|healthcheck|plan [OPTIONS]
       entrykit --help | --version
"""

EXIT_INTERNAL = 1  # an entrykit bug outside any step; steps map theirs to their own codes
log = logging.getLogger("entrykit")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``entrykit`` script and ``python -m entrykit``."""
    # At once: as PID 1 a SIGTERM that finds no handler is dropped, even during imports.
    for signum in Stopped.STOP_SIGNALS:
        signal.signal(signum, Stopped.raise_on_signal)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _exit(_main(args))
    except Stopped as stop:
        _exit(stop.exit_code)


def _main(args: list[str]) -> int:
    if not args:
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    command = fast_run_command(args)
    if command is not None:
        return _guarded(lambda: _run(command))
    return _click_main(args)


def _run(command: list[str]) -> int:
    from entrykit import pipeline

    logs.add_url_secrets_in(command)
    settings = _load_settings({})
    pipeline.run(settings, command)  # returns only when there is no command
    return EXIT_OK


def _load_settings(options: dict[str, object]) -> Settings:
    """Settings, and logging as they ask (``_guarded`` set up the defaults before)."""
    settings = Settings.load(options)
    logs.configure(settings.log_level, settings.log_format)
    for name, likely in unknown_variables(settings.environ, settings.secrets):
        logging.getLogger("entrykit.config").warning("%s is no setting; ignored%s", name, likely)
    return settings


def _guarded(body: Callable[[], int]) -> int:
    """Run ``body``; an EntrykitError becomes its exit code, logged once, redacted."""
    logs.configure()  # until the settings say otherwise, so that early errors are logged too
    try:
        return body()
    except EntrykitError as error:
        step = "config" if isinstance(error, ConfigError) else "entrykit"
        if isinstance(error, ConfigError):  # the settings may not have loaded: ask again
            logs.configure(*wanted_logging())
        logs.log_failure(logging.getLogger(f"entrykit.{step}"), error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug: still one redacted report, never a raw traceback
        log.error("internal error: %s: %s", type(error).__name__, error, exc_info=True)
        return EXIT_INTERNAL


def _exit(code: int) -> NoReturn:
    """Flush and leave at once: worker threads of a stopped step must not delay the exit."""
    from entrykit.launch import CheckedStdout, flush_stdio

    if isinstance(sys.stdout, CheckedStdout):
        try:
            sys.stdout.flush()
        except EntrykitError as error:  # output still buffered could not be written
            if code == EXIT_OK:
                logs.log_failure(log, error)
                code = error.exit_code
    flush_stdio()
    logging.shutdown()
    os._exit(code)


def _click_main(args: list[str]) -> int:
    import click

    from entrykit.launch import CheckedStdout

    if sys.stdout is None:  # started with stdout closed: keep fd 1 from being reused
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stdout = cast(TextIO, CheckedStdout(sys.stdout))
    group = _build_group()
    try:
        if args[0] == "once":
            args = once_args(args)
        result = group.main(args, prog_name="entrykit", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        sys.stderr.write(logs.redact(error.format_message()) + "\n")
        return EXIT_USAGE
    except click.UsageError as error:
        usage = error.ctx.get_usage() + "\n" if error.ctx is not None else ""
        sys.stderr.write(logs.redact(f"{usage}entrykit: {error.format_message()}\n"))
        return EXIT_USAGE
    except click.ClickException as error:
        sys.stderr.write(logs.redact(f"entrykit: {error.format_message()}\n"))
        return error.exit_code
    except click.exceptions.Exit as error:
        return error.exit_code
    except click.Abort:
        return 130
    except EntrykitError as error:  # stdout failed while click wrote the help or the version
        logs.configure()
        logs.log_failure(log, error)
        return error.exit_code
    return result if isinstance(result, int) else EXIT_OK


def _build_group() -> click.Group:
    """The click group: one small function per command, below, each over one library call."""
    import click

    @click.group(context_settings=_CONTEXT, invoke_without_command=False)
    @click.version_option(__version__, prog_name="entrykit")
    def cli() -> None:
        """The container entrypoint for Python services.

        entrykit CMD [ARGS...] loads secrets, waits for the database and other
        dependencies, applies migrations and prefetches models side by side, then
        execs CMD so that it becomes PID 1. Settings come from ENTRYKIT_* variables,
        entrykit.toml or [tool.entrykit] in pyproject.toml; docs/reference.md lists them.
        """

    for make_command in (
        _run_command,
        _wait_command,
        _migrate_command,
        _prefetch_command,
        _once_command,
        _secrets_command,
        _healthcheck_command,
        _plan_command,
    ):
        cli.add_command(make_command())
    return cli


_CONTEXT = {"help_option_names": ["-h", "--help"]}
# Commands that take a program to run: its options are its own, not entrykit's.
_COMMAND_CONTEXT = {**_CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False}


def _version() -> Callable[[Callable[..., int]], Callable[..., int]]:
    import click

    return click.version_option(__version__, prog_name="entrykit")


def _run_command() -> click.Command:
    import click

    @click.command("run", context_settings=_COMMAND_CONTEXT)
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @_version()
    def run(command: tuple[str, ...]) -> int:
        """Run the steps, then exec COMMAND (without one: exit 0 after the steps)."""
        return _guarded(lambda: _run(list(command)))

    return run


def _wait_command() -> click.Command:
    import click

    @click.command("wait", context_settings=_CONTEXT)
    @click.argument("urls", nargs=-1, metavar="[URL]...")
    @click.option("--db", "database_url", metavar="URL", help="Database URL to wait for.")
    @click.option("--tcp", multiple=True, metavar="HOST:PORT", help="TCP dependency.")
    @click.option("--http", multiple=True, metavar="URL", help="URL that must answer 2xx/3xx.")
    @click.option("--timeout", metavar="S", help="Deadline for all waits together.")
    @_version()
    def wait(
        urls: tuple[str, ...],
        database_url: str | None,
        tcp: tuple[str, ...],
        http: tuple[str, ...],
        timeout: str | None,
    ) -> int:
        """Wait for URL... (redis://, amqp://, mysql://, mongodb://, tcp://, file://, ...),
        the database, TCP ports and HTTP URLs, side by side (default: the configured ones).
        ${VAR} in any of them is replaced after the secrets are loaded."""
        given = {
            "URL": urls,
            "--db": () if database_url is None else (database_url,),
            "--tcp": tcp,
            "--http": http,
        }

        def body() -> int:
            from entrykit.pipeline import run_step
            from entrykit.waits.arguments import wait_settings
            from entrykit.waits.run import wait_for_dependencies

            settings = wait_settings(given, timeout, _load_settings)
            run_step("wait", lambda cancel: wait_for_dependencies(settings, cancel=cancel))
            return EXIT_OK

        return _guarded(body)

    return wait


def _migrate_command() -> click.Command:
    import click

    @click.command("migrate", context_settings=_CONTEXT)
    @click.option("--revision", metavar="REV", help="Target revision (default: head).")
    @click.option("--check", is_flag=True, help="Exit 0 when at the target, 1 when not.")
    @click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
    @_version()
    def migrate(revision: str | None, check: bool, sql: bool) -> int:
        """Apply migrations (Alembic, or ENTRYKIT_MIGRATE_COMMAND), once across replicas."""

        def body() -> int:
            from entrykit.migrations.run import migrate as run_migrations
            from entrykit.pipeline import load_secrets_step, run_step

            settings, _ = load_secrets_step(
                named_as_typed(
                    lambda: _load_settings({"migrate_revision": revision}),
                    {"--migrate-revision": "--revision"},
                )
            )
            outcome = run_step(
                "migrate",
                lambda cancel: run_migrations(
                    settings,
                    revision=revision,
                    check=check,
                    sql=sql,
                    output=sys.stdout,
                    cancel=cancel,
                ),
            )
            return EXIT_NOT_AT_TARGET if check and outcome.pending else EXIT_OK

        return _guarded(body)

    return migrate


def _prefetch_command() -> click.Command:
    import click

    @click.command("prefetch", context_settings=_CONTEXT)
    @click.argument("specs", nargs=-1, metavar="[SPEC]...")
    @click.option("--include", multiple=True, metavar="GLOB", help="Only files matching.")
    @click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching.")
    @click.option("--lock", "lockfile", metavar="FILE", help="Lock file to pin to or write.")
    @click.option("--verify", is_flag=True, help="Check the cache offline (sizes, sha256).")
    @click.option("--offline", is_flag=True, help="Use the cache only.")
    @click.option("--local-dir", metavar="DIR", help="Also place the files here (one repo).")
    @click.option("--dry-run", is_flag=True, help="List what would be downloaded; write nothing.")
    @click.option("--force", is_flag=True, help="Download again even when cached.")
    @click.option("--max-workers", metavar="N", help="Parallel file downloads.")
    @click.option("--cache-dir", metavar="DIR", help="The cache (default: HF_HUB_CACHE).")
    @_version()
    def prefetch(
        specs: tuple[str, ...],
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        lockfile: str | None,
        verify: bool,
        offline: bool,
        local_dir: str | None,
        dry_run: bool,
        force: bool,
        max_workers: str | None,
        cache_dir: str | None,
    ) -> int:
        """Download Hugging Face snapshots SPEC ([TYPE:][OWNER/]NAME[@REVISION]) into the
        cache; print each repo's folder on stdout."""
        options: dict[str, object] = {
            "hf_models": list(specs) or None,
            "hf_include": list(include) or None,
            "hf_exclude": list(exclude) or None,
            "hf_lockfile": lockfile,
            "hf_local_dir": local_dir,
            "hf_max_workers": max_workers,
        }

        def body() -> int:
            from pathlib import Path

            from entrykit.hub.prefetch import prefetch_models
            from entrykit.options import PREFETCH_OPTIONS, check_not_empty
            from entrykit.pipeline import load_secrets_step, run_step

            check_not_empty(
                {"--lock": lockfile, "--local-dir": local_dir, "--cache-dir": cache_dir}
                | {"--max-workers": max_workers}
            )
            for name, given in (("SPEC", specs), ("--include", include), ("--exclude", exclude)):
                if any(not value.strip() for value in given):
                    raise ConfigError(f"prefetch: {name} is empty (an unset variable?)")
            loaded = named_as_typed(lambda: _load_settings(options), PREFETCH_OPTIONS)
            settings, _ = load_secrets_step(loaded)
            report = run_step(
                "prefetch",
                lambda cancel: prefetch_models(
                    settings,
                    verify=verify,
                    offline=offline,
                    dry_run=dry_run,
                    force=force,
                    cache_dir=Path(cache_dir) if cache_dir is not None else None,
                    cancel=cancel,
                ),
            )
            for line in report.stdout_lines():
                click.echo(line)
            return EXIT_OK

        return _guarded(body)

    return prefetch


def _once_command() -> click.Command:
    import click

    @click.command("once", context_settings={**_CONTEXT, "ignore_unknown_options": True})
    @click.argument("name")
    @click.option(
        "--timeout",
        type=float,
        callback=positive_seconds,
        metavar="S",
        help="The command's own time limit in seconds (exit 50 past it).",
    )
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    @_version()
    def once(name: str, timeout: float | None, command: tuple[str, ...]) -> int:
        """Run COMMAND while holding the cross-replica lock NAME; exit with its status.

        One replica at a time: a Kubernetes Job or a compose one-off service that must not
        run twice at once. The command's output passes through unchanged.
        """

        logs.add_url_secrets_in(command)

        def body() -> int:
            from entrykit.pipeline import run_once

            return run_once(_load_settings({}), name, command, timeout=timeout)

        return _guarded(body)

    return once


def _secrets_command() -> click.Command:
    import click

    @click.command("secrets", context_settings=_CONTEXT)
    @_version()
    def secrets() -> int:
        """List the secrets that would be loaded: name, source and length, never values."""

        def body() -> int:
            from entrykit.secretfiles import load_secrets

            for secret in load_secrets(_load_settings({})).secrets:
                click.echo(f"{secret.name}\t{secret.source}\t{secret.length} bytes")
            return EXIT_OK

        return _guarded(body)

    return secrets


def _healthcheck_command() -> click.Command:
    import click

    @click.command("healthcheck", context_settings=_CONTEXT)
    @click.argument("url", required=False)
    @click.option("--tcp", metavar="HOST:PORT", help="Check a TCP port instead of a URL.")
    @click.option("--file", "path", metavar="PATH", help="Check a worker's heartbeat file.")
    @click.option(
        "--max-age",
        metavar="S",
        help="With --file: the oldest heartbeat that is healthy.  [default: 60]",
    )
    @click.option(
        "--timeout", default="3", show_default=True, metavar="S", help="Seconds for the check."
    )
    @_version()
    def healthcheck(
        url: str | None, tcp: str | None, path: str | None, max_age: str | None, timeout: str
    ) -> int:
        """Exit 0 when the service answers 2xx/3xx (default http://127.0.0.1:$PORT/healthz),
        or, with --file, while the heartbeat file is younger than --max-age."""
        from entrykit import health

        def body() -> int:
            logs.add_url_secrets_in([url or ""])
            port = os.environ.get("PORT")
            result = health.check_target(url, tcp, path, max_age, timeout, port=port)
            click.echo(logs.redact(result.line))
            return EXIT_OK if result.healthy else EXIT_NOT_AT_TARGET

        return _guarded(body)

    return healthcheck


def _plan_command() -> click.Command:
    import click

    @click.command("plan", context_settings=_COMMAND_CONTEXT)
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        help="text for people, json for scripts.",
    )
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @_version()
    def plan(fmt: str, command: tuple[str, ...]) -> int:
        """Show every setting with its source, the secrets and the steps; touches nothing."""
        from entrykit.plan import make_plan

        def body() -> int:
            the_plan = make_plan(_load_settings({}), command)
            text = the_plan.as_json() if fmt == "json" else the_plan.as_text()
            click.echo(logs.redact(text))
            if the_plan.secret_error is not None:
                raise the_plan.secret_error
            return EXIT_OK

        return _guarded(body)

    return plan
