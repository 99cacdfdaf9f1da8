"""YAML as the collector reads it (config file, rule files): safe, and strict about keys."""

from __future__ import annotations

from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice is an error, not a silent "last wins"."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse ``text`` (a SafeLoader: no arbitrary objects); yaml.YAMLError when invalid."""
    return yaml.load(text, Loader=StrictLoader)
