"""One object for what every command and stage needs: workspace, config, MLflow client, model.

Before it, each CLI command and flow stage re-derived these four from a workspace path and
overrides; now they are resolved once and passed along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import KaizenConfig, load_config
from tasks.workspace import Workspace


@dataclass
class Context:
    ws: Workspace
    config: KaizenConfig
    _client: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, workspace: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Context:
        ws = Workspace.at(workspace)
        return cls(ws, load_config(ws.root, overrides))

    @property
    def client(self):
        """The MLflow client of this workspace's tracking store (connected on first use)."""
        if self._client is None:
            from tasks.registry import connect

            self._client = connect(self.ws, self.config)
        return self._client

    @property
    def model_name(self) -> str:
        return self.config.registry.model_name
