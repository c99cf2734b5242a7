"""Run Django's ``tests/runtests.py`` with our app and middleware in its always-on lists.

Usage: ``python drs_peer_runtests.py <django>/tests/runtests.py [runtests.py options...]``

``runtests.py`` does not read ``INSTALLED_APPS`` or ``MIDDLEWARE`` from the settings module:
it replaces them with its module-level ``ALWAYS_INSTALLED_APPS`` and ``ALWAYS_MIDDLEWARE``
(``setup_collect_tests``). So this wrapper imports ``runtests.py`` as a module, which
defines those lists and functions but skips its ``if __name__ == "__main__":`` block, edits
the two lists in place for ``DRS_PEER_ENGINE=ours`` (our app before
``django.contrib.sessions``, our middleware in place of Django's), then runs that block's
statements in the module's namespace: every command-line option of ``runtests.py`` works as
usual. With ``DRS_PEER_ENGINE=cache`` nothing is edited (Django's middleware and the
``cache`` engine from the settings). Parallel workers are forked and inherit the edit.

With ``USE_TZ`` on (``DRS_PEER_USE_TZ=1``), the RuntimeWarning "DateTimeField ... received a
naive datetime" is ignored instead of raised: ``runtests.py`` makes every RuntimeWarning an
error, and Django's suite, written for ``USE_TZ = False``, creates naive datetimes in many
fixtures and ``setUpTestData`` methods, which would fail whole test classes (hundreds of
tests, the same with either engine) before a session is ever used.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import drs_peer_common


def load_runtests(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("runtests", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtests"] = module
    spec.loader.exec_module(module)
    return module


def patch_always_lists(module: ModuleType) -> None:
    apps: list[str] = module.ALWAYS_INSTALLED_APPS
    middleware: list[str] = module.ALWAYS_MIDDLEWARE
    apps[:] = drs_peer_common.installed_apps(apps)
    middleware[:] = drs_peer_common.middleware(middleware)


def main_block(path: Path) -> ast.Module:
    """The body of ``if __name__ == "__main__":`` in ``path``, as a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            and any(
                isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators
            )
        ):
            return ast.Module(body=node.body, type_ignores=[])
    raise SystemExit(f"{path} has no `if __name__ == '__main__':` block")


def main(argv: list[str]) -> None:
    if not argv or not argv[0].endswith("runtests.py"):
        raise SystemExit(__doc__)
    path = Path(argv[0]).resolve()
    sys.path.insert(0, str(path.parent))
    module = load_runtests(path)
    patch_always_lists(module)
    if drs_peer_common.use_tz(default=False):
        warnings.filterwarnings(
            "ignore", message=r".*received a naive datetime", category=RuntimeWarning
        )
    sys.argv = [str(path), *argv[1:]]
    code = compile(main_block(path), str(path), "exec")
    exec(code, module.__dict__)


if __name__ == "__main__":
    main(sys.argv[1:])
