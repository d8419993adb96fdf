"""Entry point of the `pneumoscan` console script; each command lives in its own module."""

import typer

app = typer.Typer(help="Score chest X-rays for pneumonia, locally or on a deployed stack.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

if __name__ == "__main__":
    app()
