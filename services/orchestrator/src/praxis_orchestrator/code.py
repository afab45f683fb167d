"""Protocol code on the edge: bundles from the object store, unpacked once per commit."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.js.object_store import ObjectStore

from praxis_contracts.errors import ProtocolLoadFailed
from praxis_contracts.protocols import ProtocolDefinition
from praxis_sdk.loader import SourceTree


class CodeCache:
    def __init__(self, store: Callable[[], ObjectStore], cache_dir: Path) -> None:
        self._store = store
        self.cache_dir = cache_dir
        self._trees: dict[str, SourceTree] = {}
        self._lock = asyncio.Lock()

    async def function(self, definition: ProtocolDefinition) -> Callable[..., Any]:
        tree = await self._tree(definition)
        return tree.function(definition.spec.module, definition.spec.qualname)

    async def _tree(self, definition: ProtocolDefinition) -> SourceTree:
        key = f"{definition.source_id}@{definition.commit}"
        if key in self._trees:
            return self._trees[key]
        async with self._lock:
            if key not in self._trees:
                target = self.cache_dir / str(definition.source_id) / definition.commit
                if not target.exists():
                    await self._unpack(definition.code_bundle, target)
                self._trees[key] = SourceTree(target, key)
        return self._trees[key]

    async def _unpack(self, bundle: str, target: Path) -> None:
        try:
            result = await self._store().get(bundle)
        except Exception as exc:
            raise ProtocolLoadFailed(f"code bundle {bundle} is not available: {exc}") from exc
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(result.data or b"")) as tar:
            tar.extractall(staging, filter="data")
        staging.rename(target)
