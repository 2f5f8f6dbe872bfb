"""devshell: hermetic development containers, and the pytest harness that proves them."""

__version__ = "0.1.0"


def main() -> int:
    """The `devshell` command. ^C can arrive while the CLI's modules are still importing,
    before cli.main's own handler is in place: that is the user stopping devshell, not a
    crash, so no traceback, exit 130 (the shell's 128 + SIGINT) like every interrupted run."""
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        return 130
