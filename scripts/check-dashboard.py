#!/usr/bin/env python3
"""Check a Grafana dashboard against the metrics authgate really exports.

Usage:
    python3 scripts/check-dashboard.py dashboards/authgate.json METRICS_URL_OR_FILE...

METRICS_URL_OR_FILE is an http(s) URL of a Prometheus text endpoint (for example
http://127.0.0.1:8080/metrics), a file holding that text, or "-" for stdin. With several
(the server's /metrics and an Envoy's /stats/prometheus with the authgate module), a metric
is exported when any of them exports it: the dashboard serves both deployments.

Checks:
  * the dashboard is valid JSON with schemaVersion >= 39;
  * a template variable named "datasource" of type "datasource" (query "prometheus") exists,
    and every panel (recursively, including panels inside rows), every target and every
    query variable uses it ("datasource": {"type": "prometheus", "uid": "${datasource}"});
  * panel ids are unique and every panel has a gridPos;
  * every metric named in a PromQL expression (tokens matching authgate_[a-z0-9_]+ or
    process_[a-z0-9_]+) is a family a source exports (a "# TYPE <name>" line); histogram
    series (_bucket, _count, _sum) are matched to their histogram family;
  * no expression can turn into NaN when traffic stops: the right side of every division is
    a parenthesised filter ending in "> 0" (so 0/0 gives no sample), a number or a dashboard
    variable, and every histogram_quantile is joined ("and on (...)") with a filter that
    keeps only windows with observations.

scripts/check-prometheus.sh evaluates every expression against a real Prometheus.

Exit status: 0 when everything holds, 1 listing every problem otherwise, 2 on usage errors.
Standard library only.
"""

import json
import re
import sys
import urllib.error
import urllib.request

DATASOURCE_UID = "${datasource}"
MIN_SCHEMA_VERSION = 39
METRIC_RE = re.compile(r"\b(?:authgate|process)_[a-z0-9_]+")
TYPE_RE = re.compile(r"^#\s*TYPE\s+([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\w+)\s*$")
# Series suffix -> family types that produce it.
SUFFIXES = {
    "_bucket": ("histogram", "gaugehistogram"),
    "_count": ("histogram", "summary", "gaugehistogram"),
    "_sum": ("histogram", "summary", "gaugehistogram"),
    "_total": ("counter",),  # OpenMetrics names counter families without _total
    "_created": ("counter", "histogram", "summary"),
}
FETCH_TIMEOUT = 10


def load_metrics_text(source):
    if source == "-":
        return sys.stdin.read()
    if source.startswith(("http://", "https://")):
        req = urllib.request.Request(
            source, headers={"Accept": "text/plain;version=0.0.4"}
        )
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT) as resp:
            return resp.read().decode("utf-8", errors="replace")
    with open(source, encoding="utf-8") as f:
        return f.read()


def exported_families(text):
    families = {}
    for line in text.splitlines():
        m = TYPE_RE.match(line.strip())
        if m:
            families[m.group(1)] = m.group(2).lower()
    return families


def is_exported(name, families):
    if name in families:
        return True
    for suffix, types in SUFFIXES.items():
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if families.get(base) in types:
                return True
    return False


def _mask(expr):
    """The expression with string literals and range/subquery brackets blanked
    (same length, so offsets still point into the original)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)
    return re.sub(r"\[[^\]]*\]", lambda m: " " * len(m.group(0)), expr)


def _group_end(text, start):
    """Index just past the parenthesis group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def nan_risks(expr):
    """Ways the expression can yield NaN once its rates are 0 (see the module doc)."""
    risks = []
    expr = expr or ""
    text = _mask(expr)
    for m in re.finditer(r"/", text):
        start = len(text) - len(text[m.end():].lstrip())
        rest = text[start:]
        if re.match(r"[0-9.$]", rest):
            continue  # a number or a dashboard variable
        if rest.startswith("("):
            inner = rest[1:_group_end(rest, 0) - 1]
            if re.search(r">\s*0\s*$", inner):
                continue
        risks.append("division by {!r} without a '(... > 0)' guard".format(
            expr[start:start + 60] + ("..." if len(expr) > start + 60 else "")))
    if "histogram_quantile" in text and not re.search(r"\band\s+on\s*\(", text):
        risks.append("histogram_quantile without 'and on (...) (... > 0)' keeping windows with observations")
    return risks


def uses_datasource(obj):
    ds = obj.get("datasource")
    if isinstance(ds, dict):
        return ds.get("uid") == DATASOURCE_UID
    return False


def describe(panel):
    return "panel id={} {!r}".format(panel.get("id"), panel.get("title", ""))


def walk_panels(panels):
    for panel in panels or []:
        if not isinstance(panel, dict):
            continue
        yield panel
        # Collapsed rows hold their panels; some old layouts nest them too.
        yield from walk_panels(panel.get("panels"))


def check_dashboard(dash):
    """Returns (problems, {metric name: [where it is used]})."""
    problems = []
    used = {}

    def note_exprs(text, where):
        for name in METRIC_RE.findall(text or ""):
            used.setdefault(name, []).append(where)

    version = dash.get("schemaVersion")
    if not isinstance(version, int) or version < MIN_SCHEMA_VERSION:
        problems.append(
            "schemaVersion is {!r}, need an integer >= {}".format(
                version, MIN_SCHEMA_VERSION
            )
        )
    for key in ("uid", "title"):
        if not dash.get(key):
            problems.append("dashboard has no {}".format(key))

    variables = (dash.get("templating") or {}).get("list") or []
    ds_vars = [v for v in variables if isinstance(v, dict) and v.get("name") == "datasource"]
    if not ds_vars:
        problems.append('no template variable named "datasource"')
    else:
        v = ds_vars[0]
        if v.get("type") != "datasource":
            problems.append(
                'variable "datasource" has type {!r}, not "datasource"'.format(v.get("type"))
            )
        if v.get("query") != "prometheus":
            problems.append(
                'variable "datasource" has query {!r}, not "prometheus"'.format(v.get("query"))
            )
    for v in variables:
        if not isinstance(v, dict) or v.get("type") != "query":
            continue
        where = 'variable "{}"'.format(v.get("name"))
        if not uses_datasource(v):
            problems.append("{} does not use {}".format(where, DATASOURCE_UID))
        q = v.get("query")
        note_exprs(q.get("query") if isinstance(q, dict) else q, where)
        note_exprs(v.get("definition"), where)

    panels = list(walk_panels(dash.get("panels")))
    if not panels:
        problems.append("dashboard has no panels")
    seen_ids = {}
    for panel in panels:
        where = describe(panel)
        pid = panel.get("id")
        if not isinstance(pid, int):
            problems.append("{}: id is not an integer".format(where))
        elif pid in seen_ids:
            problems.append("{}: id {} already used".format(where, pid))
        else:
            seen_ids[pid] = True
        if not isinstance(panel.get("gridPos"), dict):
            problems.append("{}: no gridPos".format(where))
        is_row = panel.get("type") == "row"
        # A row draws nothing: it may omit the datasource, but must not name another one.
        if (not is_row or "datasource" in panel) and not uses_datasource(panel):
            problems.append("{}: datasource is not {}".format(where, DATASOURCE_UID))
        targets = panel.get("targets") or []
        if not is_row and not targets:
            problems.append("{}: no targets".format(where))
        for t in targets:
            twhere = "{} target {}".format(where, t.get("refId", "?"))
            if not uses_datasource(t):
                problems.append("{}: datasource is not {}".format(twhere, DATASOURCE_UID))
            expr = t.get("expr")
            if not expr:
                problems.append("{}: no expr".format(twhere))
            note_exprs(expr, twhere)
            for risk in nan_risks(expr):
                problems.append("{}: NaN without traffic: {}".format(twhere, risk))
    return problems, used


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    dash_path, sources = argv[1], argv[2:]
    metrics_source = " and ".join(sources)
    try:
        with open(dash_path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print("FAIL {}: cannot read dashboard JSON: {}".format(dash_path, e))
        return 1
    if not isinstance(dash, dict):
        print("FAIL {}: top level is not a JSON object".format(dash_path))
        return 1

    problems, used = check_dashboard(dash)
    if not used:
        problems.append("no authgate_* metric referenced by any expression")

    families = {}
    for source in sources:
        try:
            text = load_metrics_text(source)
        except (OSError, urllib.error.URLError, ValueError) as e:
            problems.append("cannot read metrics from {}: {}".format(source, e))
            continue
        found = exported_families(text)
        if not found:
            problems.append("{} has no '# TYPE' lines".format(source))
        for name, kind in found.items():
            families.setdefault(name, kind)
    if families:
        for name in sorted(used):
            if not is_exported(name, families):
                places = used[name]
                more = " (+{} more)".format(len(places) - 1) if len(places) > 1 else ""
                problems.append(
                    "metric {} is not exported by {} (used in {}{})".format(
                        name, metrics_source, places[0], more
                    )
                )

    if problems:
        print("FAIL {}: {} problem(s)".format(dash_path, len(problems)))
        for p in problems:
            print("  - " + p)
        return 1
    print(
        "OK {}: {} panels, {} metric names, all exported by {}".format(
            dash_path,
            sum(1 for _ in walk_panels(dash.get("panels"))),
            len(used),
            metrics_source,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
