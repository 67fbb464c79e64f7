"""The command-line layer: thin Typer commands over the library, and the rich display."""
