"""Entry point of the `pneumoscan` console script; each command lives in its own module."""

import typer

from . import (backfill, batch_operations, demo, dlq, evaluate, gateway, local, overlay, report, results, score, stats,
               upload)

app = typer.Typer(help="Score chest X-rays for pneumonia, locally or on a deployed stack.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

app.add_typer(local.app, name="local")
app.command()(upload.upload)
app.command()(results.results)
app.command()(stats.stats)
app.command()(score.score)
app.command()(demo.demo)
app.command()(report.report)
app.command()(overlay.overlay)
app.command()(backfill.backfill)
app.add_typer(dlq.app, name="dlq")
app.add_typer(gateway.app, name="gateway")
app.add_typer(batch_operations.app, name="batch-ops")
app.command()(evaluate.evaluate)

if __name__ == "__main__":
    app()
