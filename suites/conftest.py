"""The contract suites: run them against any cell with `pytest suites --cell=NAME`."""

pytest_plugins = ["pytester"]

MUTATIONS: list[tuple[str, str, bool, bool]] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        MUTATIONS.extend(tuple(v) for k, v in report.user_properties if k == "mutation")


def pytest_terminal_summary(terminalreporter):
    if not MUTATIONS:
        return
    tr = terminalreporter
    tr.section("--verify mutation table")
    width = max(len(m) for m, *_ in MUTATIONS)
    tr.write_line(f"{'mutation'.ljust(width)}  {'element'.ljust(22)}  caught  repaired")
    for mutation, element, caught, repaired in sorted(MUTATIONS):
        tr.write_line(f"{mutation.ljust(width)}  {element.ljust(22)}  {'yes' if caught else 'NO':6}  "
                      f"{'yes' if repaired else 'NO'}")
    tr.write_line(f"caught {sum(r[2] for r in MUTATIONS)}/{len(MUTATIONS)}, "
                  f"repaired {sum(r[3] for r in MUTATIONS)}/{len(MUTATIONS)}")
