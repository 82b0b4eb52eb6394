"""Entity types: scope, who writes, policy and payload shape, and the registry of them.

Deployers add types by configuration (a JSON document, see `EntityRegistry.from_config`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crdt_sync.errors import InvalidInput
from crdt_sync.model import Scope, check_id
from crdt_sync.policies import POLICIES, Policy

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
MAX_PAYLOAD_BYTES = 256 * 1024
YDOC_TYPE = "ydoc"  # Yjs documents appear in pull under this type (written by the doc path)


@dataclass(frozen=True)
class PayloadShape:
    """A small, declarative payload check: required fields with JSON types."""

    required: Mapping[str, str] = field(default_factory=dict)
    id_field: str | None = None  # payload[id_field], when present, must equal the entity id

    def __post_init__(self) -> None:
        if not isinstance(self.required, Mapping):
            raise InvalidInput("required must be an object of field name -> JSON type")
        for name, kind in self.required.items():
            if not isinstance(kind, str) or kind not in JSON_TYPES:
                raise InvalidInput(f"unknown JSON type {kind!r} for field {name!r}")
        if self.id_field is not None and not isinstance(self.id_field, str):
            raise InvalidInput("id_field must be a field name")

    def problems(self, entity_id: str, payload: Mapping[str, Any]) -> list[str]:
        out = []
        for name, kind in self.required.items():
            value = payload.get(name)
            if kind == "boolean":
                ok = isinstance(value, bool)
            else:
                ok = not isinstance(value, bool) and isinstance(value, JSON_TYPES[kind])
            if not ok:
                out.append(f"field {name!r} must be a {kind}")
        if self.id_field and self.id_field in payload and payload[self.id_field] != entity_id:
            out.append(f"field {self.id_field!r} must equal the entity id")
        return out


@dataclass(frozen=True)
class EntityType:
    name: str
    scope: Scope
    policy: Policy
    shape: PayloadShape = field(default_factory=PayloadShape)

    def __post_init__(self) -> None:
        check_id(self.name, "entity type name")
        if self.scope not in ("user", "tenant"):
            raise InvalidInput("scope must be 'user' or 'tenant'")

    @property
    def device_writable(self) -> bool:
        return self.policy.device_writable


def _type(name: str, scope: Scope, policy: str, **shape: Any) -> EntityType:
    return EntityType(name, scope, POLICIES[policy], PayloadShape(**shape))


def builtin_types() -> list[EntityType]:
    """The learning platform's types (design.md §4)."""
    return [
        _type(
            "statement",
            "user",
            "append_only",
            required={"actor": "object", "verb": "object", "object": "object"},
            id_field="id",
        ),
        _type("progress", "user", "monotonic"),
        _type("bookmark", "user", "lww"),
        _type("note", "user", "manual"),
        _type("enrollment", "user", "server_authored"),
        _type("certificate", "user", "server_authored"),
        _type("bundle", "tenant", "server_authored"),
    ]


class EntityRegistry:
    def __init__(self, types: Iterable[EntityType] = ()) -> None:
        self._types: dict[str, EntityType] = {}
        for entity_type in types:
            self.register(entity_type)

    @classmethod
    def default(cls) -> EntityRegistry:
        return cls(builtin_types())

    def register(self, entity_type: EntityType) -> None:
        if entity_type.name == YDOC_TYPE:
            raise InvalidInput(f"{YDOC_TYPE!r} is reserved for Yjs documents")
        self._types[entity_type.name] = entity_type

    def get(self, name: str) -> EntityType | None:
        return self._types.get(name)

    def __iter__(self) -> Any:
        return iter(self._types.values())

    def names(self) -> list[str]:
        return sorted(self._types)

    def scope_token(self) -> str:
        """Changes when the set of types a device reads changes (cursors then resync)."""
        text = "\n".join(f"{t.name}:{t.scope}" for t in sorted(self, key=lambda t: t.name))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EntityRegistry:
        """Built-in types plus `{"entity_types": [{"name", "scope", "policy", "required"?,
        "id_field"?}]}`; a configured type with a built-in name replaces it."""
        if not isinstance(config, Mapping):
            raise InvalidInput("the entity type configuration must be an object")
        registry = cls.default()
        entries = config.get("entity_types", [])
        if not isinstance(entries, list):
            raise InvalidInput("entity_types must be a list")
        for entry in entries:
            if not isinstance(entry, dict):
                raise InvalidInput("each entity type is an object")
            policy_name = entry.get("policy", "")
            policy = POLICIES.get(policy_name) if isinstance(policy_name, str) else None
            if policy is None:
                raise InvalidInput(f"policy must be one of {sorted(POLICIES)}")
            registry.register(
                EntityType(
                    name=entry.get("name", ""),
                    scope=entry.get("scope", "user"),
                    policy=policy,
                    shape=PayloadShape(
                        required=entry.get("required", {}), id_field=entry.get("id_field")
                    ),
                )
            )
        return registry
