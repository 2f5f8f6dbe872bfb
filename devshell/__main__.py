# ^C can arrive while the modules below are still importing, before cli.main's own handler is
# in place: that is the user stopping devshell, not a crash, so no traceback, exit 130 (the
# shell's 128 + SIGINT) like every other interrupted run.
try:
    from .cli import main

    code = main()
except KeyboardInterrupt:
    code = 130
raise SystemExit(code)
