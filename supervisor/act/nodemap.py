"""Node identity: ftsup's node names (CloudWatch log stream names, the `Node` metric dimension) versus
the scheduler's node names.

With the shipped sbatch script the two are the same (the node agent names its stream after
`$SLURMD_NODENAME`), and `NodeMap()` is the identity. Elsewhere they differ:
- an explicit map, `{stream: scheduler_node}`, from the config;
- an instance map file for clusters whose logs are shipped per EC2 instance (SageMaker HyperPod publishes
  instance ids; its Slurm node names are the instances' private DNS host names, `ip-10-1-2-3`).

A stream name of the form `prefix/.../<id>` (HyperPod's `LifecycleConfig/<group>/<instance-id>`) is
also looked up by its last component. A name found in no map is taken as is; the actuator still checks
every scheduler node name against what the scheduler reports before it reaches a command line.

Instance map file formats (`load_instance_map`), chosen by content:
- a JSON or YAML mapping `{"i-0123456789abcdef0": "ip-10-1-2-3", ...}`;
- JSON describing cluster nodes, as a list or under `Nodes` / `ClusterNodeSummaries` / `NodeDetails`:
  objects with `InstanceId` and one of `NodeName`, `SlurmNodeName`, `PrivateDnsHostname`, `Hostname`
  (a DNS name is cut to its first label, as Slurm names HyperPod nodes);
- plain text, one `instance-id node-name` pair per line (`#` starts a comment).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

_NAME_KEYS = ("NodeName", "SlurmNodeName", "PrivateDnsHostname", "Hostname")
_LIST_KEYS = ("Nodes", "ClusterNodeSummaries", "NodeDetails", "nodes")


class NodeMapError(ValueError):
    """An instance map file that cannot be read or has no usable pair; the message names the file."""


@dataclass(frozen=True)
class NodeMap:
    """Translates ftsup node names (streams) to scheduler node names and back. Immutable.

    `explicit` maps stream name -> scheduler node; `instances` maps instance id -> scheduler node. The
    explicit map wins over the instance map; both win over the identity."""

    explicit: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    instances: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "explicit", MappingProxyType(dict(self.explicit)))
        object.__setattr__(self, "instances", MappingProxyType(dict(self.instances)))

    @property
    def identity(self) -> bool:
        return not self.explicit and not self.instances

    def to_scheduler(self, stream: str) -> str:
        """The scheduler's name for the node whose stream is `stream` (unvalidated: check it against the
        scheduler before use)."""
        for key in (stream, stream.rsplit("/", 1)[-1]):
            if key in self.explicit:
                return self.explicit[key]
            if key in self.instances:
                return self.instances[key]
        return stream

    def to_stream(self, node: str) -> str:
        """ftsup's name for scheduler node `node`: the explicit map's stream, else the instance id, else
        the node name itself."""
        for stream, target in self.explicit.items():
            if target == node:
                return stream
        for instance, target in self.instances.items():
            if target == node:
                return instance
        return node


def _short(name: str) -> str:
    return name.split(".", 1)[0]


def _pairs_from_objects(items: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        nested = item.get("NodeDetails")
        details: dict[str, Any] = nested if isinstance(nested, dict) else item
        instance = details.get("InstanceId")
        name = next((details.get(k) for k in _NAME_KEYS if isinstance(details.get(k), str)), None)
        if isinstance(instance, str) and name:
            out[instance] = _short(name)
    return out


def parse_instance_map(text: str, source: str = "<instance map>") -> dict[str, str]:
    """Parse an instance map (see the module docstring). Raises NodeMapError naming `source`."""
    doc: Any = None
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise NodeMapError(f"{source}: invalid JSON: {exc}") from exc
    elif stripped and ":" in stripped.splitlines()[0]:
        try:
            doc = yaml.safe_load(stripped)
        except yaml.YAMLError as exc:
            raise NodeMapError(f"{source}: invalid YAML: {exc}") from exc
    pairs: dict[str, str] = {}
    if isinstance(doc, dict):
        lists = [doc[k] for k in _LIST_KEYS if isinstance(doc.get(k), list)]
        if lists:
            for items in lists:
                pairs.update(_pairs_from_objects(items))
        elif "NodeDetails" in doc:
            pairs.update(_pairs_from_objects([doc]))
        else:
            for k, v in doc.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise NodeMapError(f"{source}: entry {k!r}: expected instance-id: node-name strings")
                pairs[k] = v
    elif isinstance(doc, list):
        pairs.update(_pairs_from_objects(doc))
    elif doc is None:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise NodeMapError(f"{source}:{number}: expected 'instance-id node-name', got {line!r}")
            pairs[parts[0]] = parts[1]
    if not pairs:
        raise NodeMapError(f"{source}: no instance-id -> node-name pair found")
    return pairs


def load_instance_map(path: Path) -> dict[str, str]:
    """Read and parse an instance map file; NodeMapError if unreadable or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NodeMapError(f"{path}: cannot read instance map: {exc.strerror or exc}") from exc
    return parse_instance_map(text, str(path))
