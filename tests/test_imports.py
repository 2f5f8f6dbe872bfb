"""What the CLI loads: never testcontainers (nor pytest), whose import the warm path would pay
for on every launch. Only devshell.container and the plugin bring them in, for those who ask."""

import pkgutil
import subprocess
import sys

import devshell

ONLY_FOR_TESTS = {"devshell.container", "devshell.plugin", "devshell.contract"}
RUNS_ON_IMPORT = {"devshell.__main__"}


def test_no_module_the_cli_can_load_imports_testcontainers_or_pytest():
    every = {f"devshell.{m.name}" for m in pkgutil.iter_modules(devshell.__path__)}
    modules = sorted(every - ONLY_FOR_TESTS - RUNS_ON_IMPORT)
    probe = (f"import sys; import {', '.join(modules)}; "
             "print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('testcontainers', 'pytest', '_pytest')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_container_module_does_import_testcontainers():
    """The control: the probe above sees an import of testcontainers where there is one."""
    probe = "import sys, devshell.container; print('testcontainers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
