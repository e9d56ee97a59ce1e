"""Metric names referenced by a PromQL expression or a Grafana variable query.

Small on purpose: Grafana variables and strings are removed, label matchers and range/offset
selectors dropped, grouping clauses (``by (le, model)``) removed, and what is left that is not
a function call, keyword or number is a metric name.
"""

from __future__ import annotations

import re

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    text = STRING.sub('""', expr)
    text = VARIABLE.sub("1", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = GROUPING.sub("", text)
    text = re.sub(r"\boffset\s+\S+", "", text)
    names = set()
    for match in IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def variable_query_metrics(query: str) -> set[str]:
    """``label_values(metric, label)`` and ``query_result(expr)`` reference metrics too."""
    m = re.fullmatch(r"\s*label_values\(\s*([^,)]+?)\s*(?:,\s*\w+\s*)?\)\s*", query)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return metric_names(m.group(1) if m else query)


def exported_family(name: str, exported: set[str]) -> bool:
    """Whether a referenced series name belongs to a family the service exports, accounting
    for the exposition suffixes of counters and histograms."""
    if name in exported:
        return True
    return any(name.endswith(s) and name[: -len(s)] in exported for s in HISTOGRAM_SUFFIXES)
