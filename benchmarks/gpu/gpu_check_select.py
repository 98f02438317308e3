"""pytest plugin of gpu_check.sh's ``tests`` step: run only the GPU tests.

    pytest -p gpu_check_select --keep-marked cuda --keep-file test_dwconv_triton.py tests/

keeps the tests that carry one of the ``--keep-marked`` markers or live in one of the
``--keep-file`` files (by file name) and deselects the rest: "-m cuda plus the Triton test
files", which a single ``-m`` expression cannot say (the Triton files have no marker; on a GPU
all their tests run on CUDA tensors). Without either option it deselects nothing.
"""

from __future__ import annotations

from pathlib import Path


def pytest_addoption(parser):
    group = parser.getgroup("gpu_check_select")
    group.addoption("--keep-marked", action="append", default=[], metavar="MARKER",
                    help="keep tests with this marker (repeatable)")
    group.addoption("--keep-file", action="append", default=[], metavar="NAME",
                    help="keep every test of the file with this name (repeatable)")


def pytest_collection_modifyitems(config, items):
    marks = set(config.getoption("keep_marked"))
    files = set(config.getoption("keep_file"))
    if not marks and not files:
        return
    kept, dropped = [], []
    for item in items:
        keep = Path(str(item.fspath)).name in files or any(
            item.get_closest_marker(m) is not None for m in marks)
        (kept if keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
