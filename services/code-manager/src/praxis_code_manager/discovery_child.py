"""The discovery child: imports untrusted protocol modules, reports each as one JSON line.

Run by ``praxis_code_manager.discovery`` in the service's sandbox (``praxis_runtime.sandbox``;
confined by ``praxis_runtime.confine`` before this module is imported). The request
(``{"root", "identity", "modules"}``) comes on stdin; the answers go to the stdout the child was
started with, which is kept for them alone: protocol code printing goes to stderr.

Lines written, in order: ``{"modules": [...]}`` (when the request lists none), then per module
``{"begin": m}`` before importing it and ``{"module": m, "functions": [...], "error": ...}``
after. A module that kills the process, loops or exhausts memory leaves a ``begin`` without its
result: the parent records that module as the problem and starts a new child for the rest.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main() -> int:
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # print() in protocol code lands on stderr, not in the results
    request = json.loads(sys.stdin.read())
    sys.stdin.close()

    from pathlib import Path

    from praxis_sdk.loader import SourceTree

    tree = SourceTree(Path(request["root"]), request["identity"])

    def emit(line: dict[str, Any]) -> None:
        results.write(json.dumps(line) + "\n")
        results.flush()

    modules = request.get("modules")
    if modules is None:
        modules = list(tree.modules())
        emit({"modules": modules})
    for module in modules:
        emit({"begin": module})
        try:
            specs = tree.discover_module(module)
        except BaseException as exc:  # SystemExit, MemoryError, ...: all are the module's
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            emit({"module": module, "functions": [], "error": message})
            continue
        emit({"module": module, "functions": [s.model_dump(mode="json") for s in specs]})
    results.close()
    return 0


if __name__ == "__main__":
    os._exit(main())  # no interpreter teardown: protocol code's atexit hooks do not run
