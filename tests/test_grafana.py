"""The Grafana dashboard in docs/grafana graphs only metrics docs/metrics.md lists, each
in the Graphite namespace statsd gives its type, and every per-model metric somewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
DASHBOARD = DOCS / "grafana" / "django-mirror.json"

#: Where statsd's Graphite backend (default, legacy namespace) writes each metric type.
NAMESPACES = {
    "stats": {"counter"},
    "stats_counts": {"counter"},
    "stats.gauges": {"gauge"},
    "stats.timers": {"timer"},
}
#: A metric path in a target: namespace, the ${prefix} variable, then the name.
PATH = re.compile(
    r"\b(stats_counts|stats\.gauges|stats\.timers|stats)\.\$\{prefix\}"
    r"(django_mirror\.[A-Za-z0-9_.*$-]+)"
)
#: What statsd derives from one timer; the dashboard uses percentThreshold 50 and 95.
TIMER_STATS = {"upper_50", "upper_95", "median", "mean", "upper", "lower", "count"}
#: Where a target may leave a name's variable part open.
WILDCARDS = {"$model", "*"}


def documented() -> dict[str, str]:
    """``{metric name: type}`` from the table of docs/metrics.md ("timer (ms)" is a timer)."""
    metrics = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`django_mirror."):
            metrics[cells[0].strip("`")] = cells[1].split()[0]
    return metrics


def pattern(name: str) -> re.Pattern[str]:
    """A documented name with its ``<placeholders>`` matching one path node."""
    parts = re.split(r"(<[^>]+>)", name)
    return re.compile("".join(r"[^.]+" if p.startswith("<") else re.escape(p) for p in parts))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def metric_paths(target: str) -> list[tuple[str, str]]:
    """``(namespace, metric name)`` of every path in a Graphite target, timer statistic
    suffix removed; fails on a path that does not start with a namespace and ${prefix}."""
    paths = [(ns, name.rstrip(".")) for ns, name in PATH.findall(target)]
    assert target.count("django_mirror.") == len(paths), f"unprefixed path in {target}"
    result = []
    for namespace, name in paths:
        if namespace == "stats.timers":
            name, _, statistic = name.rpartition(".")
            assert statistic in TIMER_STATS, f"{statistic} is not a statsd timer statistic"
        result.append((namespace, name))
    return result


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(panel title, namespace, metric name)`` of every metric the panels graph."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.extend((panel["title"], *path) for path in metric_paths(target["target"]))
    return found


def test_the_table_is_parsed() -> None:
    metrics = documented()
    assert metrics["django_mirror.read.match.<model>"] == "counter"
    assert metrics["django_mirror.relay.backlog"] == "gauge"
    assert metrics["django_mirror.read.latency.target.<model>"] == "timer"


def test_importable_with_a_graphite_data_source_variable(dashboard: dict[str, Any]) -> None:
    [source] = dashboard["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "graphite")
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["DS"]["type"], variables["DS"]["query"]) == ("datasource", "graphite")
    assert variables["DS"]["current"]["value"] == "${" + source["name"] + "}"
    assert variables["prefix"]["type"] == "textbox" and variables["prefix"]["query"] == ""
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert model["datasource"]["uid"] == "${DS}"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "graphite", "uid": "${DS}"}, panel["title"]
            assert all(t["datasource"]["uid"] == "${DS}" for t in panel["targets"])


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_target_names_a_documented_metric_in_its_types_namespace(
    dashboard: dict[str, Any], targets: list[tuple[str, str, str]]
) -> None:
    metrics = {pattern(name): kind for name, kind in documented().items()}
    model_query = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    queried = [("variable model", *path) for path in metric_paths(model_query["query"])]
    assert targets
    for title, namespace, name in targets + queried:
        kinds = [kind for regex, kind in metrics.items() if regex.fullmatch(name)]
        assert kinds, f"{title}: {name} is not in docs/metrics.md"
        assert set(kinds) & NAMESPACES[namespace], f"{title}: {name} is not a {namespace} metric"


def test_every_per_model_metric_is_graphed(targets: list[tuple[str, str, str]]) -> None:
    graphed = {name for _, _, name in targets}
    for name in documented():
        if name.endswith(".<model>"):
            stem = name.removesuffix("<model>")
            assert any(g.startswith(stem) and g[len(stem) :] in WILDCARDS for g in graphed), (
                f"{name} is in no panel"
            )
