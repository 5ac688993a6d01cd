"""Built-in subcommands of ``farecore``: each module here has ``register(subparsers)``."""

__all__: list[str] = []
