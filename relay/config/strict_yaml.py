"""A PyYAML loader that reads what the admin meant.

YAML 1.1 turns `no` into False, `0143` into 99 and `1:30` into 90, and silently keeps the
last of two duplicate keys. Config files must not do any of that, so only `true`/`false`,
plain decimal integers, decimals and `null`/`~`/empty are typed; everything else is a string.
Every value is returned together with its position so validation can say file:line:col.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import yaml

from relay.config.errors import ConfigError, ConfigInvalid, Path, dotted

Mark = Tuple[int, int]


class _StrictResolver(yaml.resolver.BaseResolver):
    pass


_StrictResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictResolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_StrictResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)\.[0-9]+$"), list("-+0123456789"))
_StrictResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _StrictComposer(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,
                      yaml.composer.Composer, _StrictResolver):
    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _StrictResolver.__init__(self)


class LocatedDocument:
    """Plain Python data plus the (line, column) of every value and key, by path."""

    def __init__(self, filename: str, data: object, marks: Dict[Path, Mark], key_marks: Dict[Path, Mark]):
        self.filename = filename
        self.data = data
        self.marks = marks
        self.key_marks = key_marks  # where each mapping key itself stands

    def mark(self, path: Path) -> Mark:
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def error(self, path: Path, message: str, at_key: bool = False) -> ConfigError:
        line, column = self.key_marks.get(path) if at_key and path in self.key_marks else self.mark(path)
        return ConfigError(self.filename, line, column, dotted(path), message)


def parse(text: str, filename: str) -> LocatedDocument:
    try:
        node = _StrictComposer(text).get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigInvalid([ConfigError(filename, line, column, "", f"YAML syntax: {problem}")])
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError(filename, 1, 1, "", f"YAML syntax: {exc}")])
    marks: Dict[Path, Mark] = {}
    key_marks: Dict[Path, Mark] = {}
    errors: List[ConfigError] = []
    data = _convert(node, (), (marks, key_marks), errors, filename) if node is not None else None
    if errors:
        raise ConfigInvalid(errors)
    return LocatedDocument(filename, data, marks, key_marks)


def _mark_of(node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _convert(node, path: Path, all_marks, errors, filename):
    marks = all_marks[0]
    marks[path] = _mark_of(node)
    if isinstance(node, yaml.MappingNode):
        return _convert_mapping(node, path, all_marks, errors, filename)
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (index,), all_marks, errors, filename)
                for index, item in enumerate(node.value)]
    return _convert_scalar(node, path, errors, filename)


def _convert_mapping(node, path, all_marks, errors, filename):
    marks, key_marks = all_marks
    result: Dict[object, object] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            line, column = _mark_of(key_node)
            errors.append(ConfigError(filename, line, column, dotted(path), "keys must be plain names"))
            continue
        key = str(key_node.value)
        if key in result:
            line, column = _mark_of(key_node)
            first_line = key_marks[path + (key,)][0]
            errors.append(ConfigError(filename, line, column, dotted(path + (key,)),
                                      f"duplicate key (first defined on line {first_line})"))
            continue
        result[key] = _convert(value_node, path + (key,), all_marks, errors, filename)
        key_marks[path + (key,)] = _mark_of(key_node)
        if not isinstance(value_node, yaml.ScalarNode):
            # A nested block starts on the next line; the key is where the admin looks.
            marks[path + (key,)] = _mark_of(key_node)
    return result


def _convert_scalar(node, path, errors, filename):
    tag, value = node.tag, node.value
    if tag == "tag:yaml.org,2002:bool":
        return value.lower() == "true"
    if tag == "tag:yaml.org,2002:int":
        return int(value)
    if tag == "tag:yaml.org,2002:float":
        return float(value)
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag in ("tag:yaml.org,2002:str", "!"):
        return value
    line, column = _mark_of(node)
    errors.append(ConfigError(filename, line, column, dotted(path), f"unsupported YAML tag {tag}"))
    return value
