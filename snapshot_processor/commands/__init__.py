"""The command line's everyday commands, one module each; ``cli`` registers them.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``. A failure raises
:class:`~snapshot_processor.commands.common.CommandError` with its exit code; ``cli``
prints it as one line.
"""
