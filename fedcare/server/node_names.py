"""Which site a node id answered as, so a node that stays silent is named by its history.

A deployed site's node id is the SuperLink's: stable for as long as the site's key stays
registered. The pre-flight learns ``node id -> site`` from each answer; a node that does
not answer at all says nothing about itself, so the report could only print its id. The
ServerApp remembers each deployed site's node in ``<output-dir>/site-nodes.json`` and
labels a silent node with the site it answered as before, and in which run: history,
never a claim that the site is that one now.

The file serves names only: a missing, unreadable or invalid file is logged and treated
as empty (it never stops a run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedcare.common.files import strict_json_loads, write_text_atomic

logger = logging.getLogger(__name__)

NODE_NAMES_FILENAME = "site-nodes.json"
NODE_NAMES_FORMAT = "fedcare-site-nodes"
NODE_NAMES_VERSION = 1


@dataclass(frozen=True)
class KnownNode:
    site: str
    run: str

    def label(self) -> str:
        return f"answered as {self.site} in run {self.run}"


class NodeNames:
    """``node id -> (site, run)`` of each deployed site's latest pre-flight answer."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._nodes = self._load()

    @classmethod
    def in_output_dir(cls, output_dir: str | os.PathLike[str]) -> NodeNames:
        return cls(Path(output_dir) / NODE_NAMES_FILENAME)

    def known(self) -> dict[int, KnownNode]:
        return dict(self._nodes)

    def remember(self, sites_by_node: Mapping[int, str], *, run: str) -> None:
        """Record each node's site for ``run``; a node seen under another site's name
        before is overwritten (its key was given to another site)."""
        latest = {**self._nodes, **{int(node): KnownNode(site, run)
                                    for node, site in sites_by_node.items()}}
        if latest == self._nodes:
            return
        self._nodes = latest
        document = {"format": NODE_NAMES_FORMAT, "version": NODE_NAMES_VERSION,
                    "nodes": {str(node): {"site": known.site, "run": known.run}
                              for node, known in sorted(latest.items())}}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self._path, json.dumps(document, indent=2) + "\n")
        except OSError as err:
            logger.warning("site nodes %s: not written (%s); a silent node is then named by "
                           "its id only", self._path, err)

    def _load(self) -> dict[int, KnownNode]:
        try:
            data = strict_json_loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as err:
            logger.warning("site nodes %s: ignored, cannot be read (%s)", self._path, err)
            return {}
        try:
            if (data.get("format"), data.get("version")) != (NODE_NAMES_FORMAT,
                                                             NODE_NAMES_VERSION):
                raise ValueError(f"format/version must be {NODE_NAMES_FORMAT!r}/"
                                 f"{NODE_NAMES_VERSION}")
            nodes = {int(node): KnownNode(str(entry["site"]), str(entry["run"]))
                     for node, entry in data["nodes"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            logger.warning("site nodes %s: ignored, not a valid file (%s)", self._path, err)
            return {}
        return nodes
