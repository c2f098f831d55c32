"""Derive machines-api.schema.json from the Swagger copy (see README.md beside this file).

    python derive.py path/to/doc.json > machines-api.schema.json

Keeps the Swagger definitions that the calls volguard makes reach, verbatim, then adds
the fields fly-go reads that the copy predates (each addition names its source in
`x-source`), lets null through where fly-go's Go type is a pointer, requires the fields
fly-go's structs always write (no `omitempty`), and closes the top-level objects
(`additionalProperties: false`) so a key no source names fails.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

SWAGGER = "jlengrand/jetbrains-client-api-repository apis/flyio/doc.json @3cdf8826"
FLYGO = "superfly/fly-go @22d6e518"
DOCS = "superfly/docs machines/api/volumes-resource.html.markerb @5c22c8ce"
REQUIRED = {
    "Volume": (
        "id", "name", "state", "size_gb", "region", "zone", "encrypted", "attached_machine_id",
        "attached_alloc_id", "created_at", "host_dedication_id", "snapshot_retention",
        "auto_backup_enabled",
    ),
    "VolumeSnapshot": (
        "id", "size", "volume_size", "digest", "created_at", "status", "retention_days",
    ),
    "Machine": ("image_ref", "cordoned"),
}  # fmt: skip
ROOTS = (
    "Machine", "Volume", "VolumeSnapshot", "CreateVolumeRequest", "CreateMachineRequest",
    "ErrorResponse",
)  # fmt: skip


def derive(swagger: dict[str, Any]) -> dict[str, Any]:
    definitions = swagger["definitions"]
    kept: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept[name] = copy.deepcopy(definitions[name])
        todo += [ref.rsplit("/", 1)[1] for ref in _refs(kept[name])]

    def add(definition: str, field: str, schema: dict[str, Any], source: str) -> None:
        kept[definition]["properties"][field] = {**schema, "x-source": source}

    def nullable(definition: str, field: str, source: str) -> None:
        prop = kept[definition]["properties"][field]
        prop["type"] = [prop["type"], "null"]
        prop["x-source"] = source

    volume_go = f"{FLYGO} volume_types.go Volume"
    add("Volume", "host_dedication_id", {"type": "string"}, volume_go)
    add("Volume", "host_status", {"type": "string", "enum": ["ok", "unknown", "unreachable"]},
        f"{volume_go}; values: {FLYGO} machine_types.go HostStatus")  # fmt: skip
    add("Volume", "host_dedication_key", {"type": "string"}, f"{DOCS} (the list example)")
    nullable("Volume", "attached_machine_id", f"{volume_go}: *string")
    nullable("Volume", "attached_alloc_id", f"{volume_go}: *string")

    snapshot_go = f"{FLYGO} volume_types.go VolumeSnapshot"
    add("VolumeSnapshot", "volume_size", {"type": "integer"}, snapshot_go)
    add("VolumeSnapshot", "retention_days", {"type": ["integer", "null"]},
        f"{snapshot_go}: *int; {DOCS} (the snapshot example)")  # fmt: skip
    nullable("VolumeSnapshot", "created_at",
             f"{snapshot_go}: time.Time, zero while being taken (flyctl prints no time); "
             "null or the zero time: UNVERIFIED which the API sends")  # fmt: skip

    machine_go = f"{FLYGO} machine_types.go Machine"
    add("Machine", "version", {"type": "string"}, machine_go)
    add("Machine", "host_status", {"type": "string", "enum": ["ok", "unknown", "unreachable"]},
        machine_go)  # fmt: skip
    add("Machine", "cordoned", {"type": "boolean"}, machine_go)
    add("Machine", "incomplete_config", {"$ref": "#/definitions/fly.MachineConfig"}, machine_go)
    add("Machine", "containers", {"type": "array", "items": {"type": "object"}}, machine_go)

    request_go = f"{FLYGO} volume_types.go CreateVolumeRequest"
    add("CreateVolumeRequest", "auto_backup_enabled", {"type": "boolean"}, request_go)
    add("CreateVolumeRequest", "unique_zone_app_wide", {"type": "boolean"}, request_go)
    add("CreateVolumeRequest", "compute_image", {"type": "string"}, request_go)
    for field, prop in kept["CreateVolumeRequest"]["properties"].items():
        if field not in ("name", "region", "compute_image", "compute", "machines_only"):
            prop["type"] = [prop["type"], "null"]  # fly-go pointers: unset is sent as null
    # `compute` is a *MachineGuest: flyctl's first deploy sends null when fly.toml has no
    # [[vm]] (FLYCTL internal/command/deploy/deploy_first.go @ad0172fa).
    kept["CreateVolumeRequest"]["properties"]["compute"] = {
        "anyOf": [{"$ref": "#/definitions/fly.MachineGuest"}, {"type": "null"}],
        "x-source": f"{request_go}: ComputeRequirements *MachineGuest",
    }
    guest_go = f"{FLYGO} machine_types.go MachineGuest"
    add("fly.MachineGuest", "max_memory_mb", {"type": "integer"}, guest_go)
    add("fly.MachineGuest", "persist_rootfs", {"type": "string",
        "enum": ["never", "always", "restart"]}, f"{guest_go} (deprecated there)")  # fmt: skip
    kept["ErrorResponse"]["properties"]["status"] = {
        "type": "string",
        "x-source": f"{SWAGGER} main.statusCode (unknown, insufficient_capacity) and "
        f"{FLYGO} flaps/flaps_error.go (name_taken): open, more codes exist",
    }

    # CreateMachineRequest (the body of POST /machines, temporary Machines of #10) is the
    # SWAGGER definition as is: fly-go's LaunchMachineInput adds only keys volguard never sends.
    for name in (
        "Machine",
        "Volume",
        "VolumeSnapshot",
        "CreateVolumeRequest",
        "CreateMachineRequest",
    ):
        kept[name]["additionalProperties"] = False
    # Go's encoder always writes a field whose tag has no `omitempty`: with fly-go's structs
    # on both ends, these keys are in every answer (the Swagger copy requires none).
    for name, fields in REQUIRED.items():
        kept[name]["required"] = list(fields)
        kept[name]["x-required-source"] = f"{FLYGO}: the fields without omitempty"
    return {
        "$comment": f"Derived from {SWAGGER} plus {FLYGO}; see README.md",
        "definitions": dict(sorted(kept.items())),
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        here = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return here + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(json.dumps(derive(json.load(f)), indent=1, sort_keys=True))
