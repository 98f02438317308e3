"""pytest plugin of gpu_check.sh's ``tests`` step: run only the GPU tests.

    pytest -p gpu_check_select --keep-marked cuda --keep-keyword triton tests/

keeps the tests that carry one of the ``--keep-marked`` markers, live in one of the
``--keep-file`` files (by file name) or whose node id contains one of the ``--keep-keyword``
words (case-insensitive: the Triton cases of each op's test file, which run on CUDA tensors on a
GPU) and deselects the rest: "-m cuda or the Triton tests", which a single ``-m`` expression
cannot say. Without any option it deselects nothing.
"""

from __future__ import annotations

from pathlib import Path


def pytest_addoption(parser):
    group = parser.getgroup("gpu_check_select")
    group.addoption("--keep-marked", action="append", default=[], metavar="MARKER",
                    help="keep tests with this marker (repeatable)")
    group.addoption("--keep-file", action="append", default=[], metavar="NAME",
                    help="keep every test of the file with this name (repeatable)")
    group.addoption("--keep-keyword", action="append", default=[], metavar="WORD",
                    help="keep tests whose node id contains WORD, any case (repeatable)")


def pytest_collection_modifyitems(config, items):
    marks = set(config.getoption("keep_marked"))
    files = set(config.getoption("keep_file"))
    words = [w.lower() for w in config.getoption("keep_keyword")]
    if not marks and not files and not words:
        return
    kept, dropped = [], []
    for item in items:
        keep = Path(str(item.fspath)).name in files or any(
            item.get_closest_marker(m) is not None for m in marks) or any(
            w in item.nodeid.lower() for w in words)
        (kept if keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
