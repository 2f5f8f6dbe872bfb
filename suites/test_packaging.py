"""An installed (non-editable) devshell finds its shipped cells, init script and suites."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import repo_wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not repo_wheel.beside_the_repository():
        pytest.skip("running from an installed devshell: it is the installed package")
    out = tmp_path_factory.mktemp("wheel")
    target = out / "site"
    zipfile.ZipFile(repo_wheel.build(out)).extractall(target)
    return target


def test_installed_package_finds_its_shipped_cells_and_suites(installed):
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from devshell import cells, contract, spec; "
             "print(cells.find('bookworm', cells.search_path([], {})).source); "
             "print(contract.suites_dir()); print(len(spec.init_script()) > 0)")
    env = {k: v for k, v in os.environ.items() if k != "DEVSHELL_CELLS_PATH"}
    done = subprocess.run([sys.executable, "-c", probe, str(installed)], capture_output=True,
                          text=True, env={**env, "XDG_CACHE_HOME": str(installed / "cache")})
    assert done.returncode == 0, done.stderr
    cell, suites, init = done.stdout.split("\n")[:3]
    assert cell == str(installed / "devshell" / "cells" / "bookworm.yaml")
    assert suites == str(installed / "devshell" / "suites")
    assert init == "True"
