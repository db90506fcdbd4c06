"""The commands of the web side: preview (the draft on 127.0.0.1), publish (the static archive) and serve (the
archive with signup). `run` (week.py) prints what it published with `print_publish`."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from digest.cli.app import WEEK, db_path, issue_week, open_db, read_config, say, warn
from digest.errors import SetupError


def preview(
    ctx: typer.Context,
    week: str | None = WEEK,
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the preview in the default browser."),
) -> None:
    """Serve the week's draft on 127.0.0.1; the page refreshes itself as the draft or a template changes."""
    from digest.web.preview import PreviewServer

    config = read_config(ctx)
    issue_id = issue_week(config, week)
    try:
        server = PreviewServer(ctx.obj["config"], issue_id, port=port).start()
    except OSError as exc:
        raise SetupError(f"--port: cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    say(f"previewing {issue_id} at {server.url} (Ctrl-C to stop)")
    if server.preview.state.error:
        say(f"  {server.preview.state.error}")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        say("stopped")
    finally:
        server.stop()


def publish(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, "--out", show_default="publish.dir, else site/ beside feeds.yaml", help="The folder to write."
    ),
) -> None:
    """Write the static archive: index.html, issues/<issue>/, feed.xml (Atom) and feed.json; only what changed."""
    from digest.web.publish import publish as publish_site

    report = publish_site(read_config(ctx), open_db(ctx), out=out)
    print_publish(report)


def print_publish(report, prefix: str = "") -> None:
    say(
        f"{prefix}published {report.issues} issue(s) to {report.out}: {len(report.written)} file(s) written, "
        f"{report.unchanged} unchanged"
    )
    for warning in report.warnings:
        warn(warning)


def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(
        None, "--host", show_default="serve.host, else 127.0.0.1", help="Address to listen on."
    ),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, show_default="serve.port, else 8080", help="Port to listen on."
    ),
) -> None:
    """Serve the archive, signup with double opt-in, confirmation and one-click unsubscribe (behind a proxy)."""
    from digest.web.app import serve as serve_web

    config = read_config(ctx)
    if config.serve is None:
        raise SetupError(f"{config.path}: add a serve: section (and newsletter.site_url) to use digest serve")
    host, port = host or config.serve.host, config.serve.port if port is None else port
    try:
        serve_web(
            config,
            db_path(ctx),
            host=host,
            port=port,
            on_ready=lambda address: say(f"serving {config.newsletter.site_url} on {address} (Ctrl-C to stop)"),
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from systemctl stop (uvicorn finished the requests first)
        say("stopped")
