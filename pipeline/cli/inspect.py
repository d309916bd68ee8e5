"""Commands that look without changing anything: the plan (``stages``) and audit logs (``audit``)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pipeline.audit.reader import AuditLog, format_events
from pipeline.cli.errors import reported_errors
from pipeline.engine import Pipeline
from pipeline.errors import PipelineError


def plugin_filters(spec: str | None, no_plugins: bool) -> dict[str, Any]:
    """``--plugins a,b,-c`` allows a and b and denies c; ``--no-plugins`` keeps the built-ins only."""
    if no_plugins:
        return {"allow": ["pt2e-pipeline"]}
    if not spec:
        return {}
    allow = [item for item in spec.split(",") if item and not item.startswith("-")]
    deny = [item[1:] for item in spec.split(",") if item.startswith("-")]
    return {"allow": allow or None, "deny": deny}


plugins_option = click.option(
    "--plugins",
    "plugins_spec",
    metavar="LIST",
    help="Comma-separated plugin or distribution names to allow; prefix a name with '-' to deny it.",
)
no_plugins_option = click.option(
    "--no-plugins", is_flag=True, help="Load only the built-in plugins (pt2e-pipeline itself)."
)


@click.command()
@plugins_option
@no_plugins_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--quantizers", "listing", flag_value="quantizer", help="List the quantizers plugins offer instead."
)
@click.option("--models", "listing", flag_value="model", help="List the models plugins offer instead.")
@click.pass_context
def stages(
    ctx: click.Context, plugins_spec: str | None, no_plugins: bool, as_json: bool, listing: str | None
) -> None:
    """Show the resolved plan: each stage, its plugin, and why it sits where it does."""
    with reported_errors(ctx):
        pipeline = Pipeline.default(**plugin_filters(plugins_spec, no_plugins))
    if listing is not None:
        _print_factories(pipeline, listing, as_json)
        return
    rows = pipeline.plan.describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="pt2e-pipeline plan", show_lines=True)
    for column in (
        "#",
        "stage",
        "phase",
        "plugin",
        "distribution",
        "version",
        "requires",
        "ensures",
        "why",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["position"] + 1),
            row["stage"] + ("" if row["required"] else f"\n[dim]bisect {row['bisect']}[/dim]"),
            row["phase"],
            row["plugin"],
            row["distribution"] or "-",
            row["plugin_version"] or "-",
            "\n".join(row["requires"]) or "-",
            "\n".join(row["ensures"]) or "-",
            "\n".join(row["why"]),
        )
    Console().print(table)


@click.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--node", help="Show this node's full history and where it came from.")
@click.option("--stage", help="Only events of this stage.")
@click.option(
    "--action",
    help="Only events of this kind (created, erased, rewired, ... or a full event name).",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.pass_context
def audit(
    ctx: click.Context,
    log: str,
    node: str | None,
    stage: str | None,
    action: str | None,
    as_json: bool,
) -> None:
    """Read an audit log: a per-stage summary, or the history of one node."""
    with reported_errors(ctx):
        audit_log = AuditLog.load(log)
        if node is not None:
            try:
                events = audit_log.history(node)
                lineage = audit_log.lineage(node)
            except KeyError as error:
                raise PipelineError(str(error.args[0])) from error
            events = [e for e in events if _matches(e, stage, action)]
            if as_json:
                for event in events:
                    click.echo(json.dumps(event))
                return
            for line in format_events(events):
                click.echo(line)
            click.echo("lineage:")
            for origin in lineage:
                click.echo(f"  {origin}")
            return
        if stage is not None or action is not None:
            selected = audit_log.select(stage=stage, action=action)
            if as_json:
                for event in selected:
                    click.echo(json.dumps(event))
            else:
                for line in format_events(selected):
                    click.echo(line)
            return
        rows = audit_log.summary()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"audit: {log}")
    for column in ("run", "stage", "plugin", "status", "ms", "nodes", "+", "-", "~", "events"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["run"],
            row["stage"],
            row["plugin"] or "-",
            row["status"] + (f" ({row['reason']})" if row["reason"] else ""),
            f"{(row['seconds'] or 0) * 1000:.1f}",
            "-" if row["nodes_after"] is None else str(row["nodes_after"]),
            str(row["added"]),
            str(row["removed"]),
            str(row["rewired"]),
            ", ".join(f"{k} {v}" for k, v in row["events"].items()) or "-",
        )
    Console().print(table)


def _matches(event: dict[str, Any], stage: str | None, action: str | None) -> bool:
    if stage is not None and event.get("stage") != stage:
        return False
    if action is not None:
        wanted = action if "." in action else f"node.{action}"
        return bool(event["event"] == wanted)
    return True


def _print_factories(pipeline: Pipeline, kind: str, as_json: bool) -> None:
    offered = pipeline.registry.quantizers if kind == "quantizer" else pipeline.registry.models
    rows: list[dict[str, Any]] = [
        {
            "name": provided.item.name,
            "plugin": str(provided.plugin),
            "description": provided.item.description,
            "options": dict(provided.item.options),
        }
        for provided in sorted(offered, key=lambda provided: provided.item.name)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{kind}s offered by the installed plugins", show_lines=True)
    for column in ("name", "plugin", "description", "options (--option name=value)"):
        table.add_column(column, overflow="fold")
    for row in rows:
        options = "\n".join(f"{name}: {meaning}" for name, meaning in row["options"].items()) or "-"
        table.add_row(row["name"], row["plugin"], row["description"], options)
    Console().print(table)
