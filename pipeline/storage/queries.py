"""Named read queries over a store: what ``segflow query`` prints and the report draws.

One SQL text per view, run unchanged on chdb and on a ClickHouse server, with bound
parameters (``{from:DateTime64(3, 'UTC')}``…), never string formatting of user input. Every
view takes the same filter — an event-time range and an optional app (``app`` or
``namespace/app``, matching either end) — so the CLI and the report stay one code path.
Views whose table a store lacks (older schema, or a table a later feature adds) say so in one
line instead of failing inside ClickHouse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import StorageError

FAR_PAST = 0.0
FAR_FUTURE = 4_102_444_800.0  # 2100-01-01


@dataclass(frozen=True, slots=True)
class QueryFilter:
    """Event-time range [start, end) in epoch seconds, optional app, row limit."""

    start: float = FAR_PAST
    end: float = FAR_FUTURE
    app: str = ""
    limit: int = 50

    def parameters(self) -> dict[str, Any]:
        ns, _, name = self.app.rpartition("/")
        return {"from": self.start, "to": self.end, "app": name, "ns": ns,
                "any_app": int(not self.app), "limit": max(0, int(self.limit))}


@dataclass(frozen=True, slots=True)
class View:
    """One named query: the table it reads and its SQL."""

    name: str
    table: str
    description: str
    sql: str


# ``app`` matches the app name; ``ns`` (when given) must match that end's namespace too.
_END = "({end}_app = {{app:String}} AND ({{ns:String}} = '' OR {end}_namespace = {{ns:String}}))"
_APP = f"({{any_app:UInt8}} OR {_END.format(end='src')} OR {_END.format(end='dst')})"
# incidents: the app is the source's, or one of the destinations' ('ns/app' text)
_INCIDENT_APP = (
    "({any_app:UInt8} OR (src_app = {app:String} AND ({ns:String} = '' "
    "OR src_namespace = {ns:String})) OR arrayExists(d -> splitByChar('/', d)[-1] = "
    "{app:String} AND ({ns:String} = '' OR d = concat({ns:String}, '/', {app:String})), "
    "dst_workloads))")
_RANGE = ("{col} >= toDateTime64({from:Float64}, 3, 'UTC') "
          "AND {col} < toDateTime64({to:Float64}, 3, 'UTC')")


def _range(col: str) -> str:
    return _RANGE.replace("{col}", col)


VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View("edges", "edge_minute", "busiest edges (client → server, port) by flows", f"""
SELECT src_namespace, src_app, dst_namespace, dst_app, service_port, proto,
       sum(flows) AS flows, sum(bytes) AS bytes, sum(rejected_flows) AS rejected_flows,
       sum(violating_flows) AS violating_flows,
       min(minute) AS first_seen, max(minute) AS last_seen,
       if(countIf(phase = 'audit') > 0, 'audit', 'enforce') AS learned_in
FROM edge_minute FINAL
WHERE {_range("minute")} AND {_APP}
GROUP BY src_namespace, src_app, dst_namespace, dst_app, service_port, proto
ORDER BY flows DESC, src_namespace, src_app, dst_namespace, dst_app, service_port, proto
LIMIT {{limit:UInt32}}"""),
        View("violations", "violations", "latest violations, newest first", f"""
SELECT ts, type, severity, score, src_namespace, src_app, src_ip, dst_namespace, dst_app,
       dst_ip, dst_port, proto, count, last_seen, detected_at, reason, id
FROM violations FINAL
WHERE {_range("ts")} AND {_APP}
ORDER BY ts DESC, id
LIMIT {{limit:UInt32}}"""),
        View("violation-counts", "violations", "violations per day, type and severity", f"""
SELECT toDate(ts) AS day, type, severity, count() AS violations, sum(count) AS flows
FROM violations FINAL
WHERE {_range("ts")} AND {_APP}
GROUP BY day, type, severity
ORDER BY day, type, severity
LIMIT {{limit:UInt32}}"""),
        View("incidents", "incidents",
             "latest incidents (violations of one source grouped), newest first", f"""
SELECT first_seen, severity, score, source, src_ip, violations, flows, types, dst_workloads,
       critical_assets, criticality, detected_at, last_seen, reason, violation_ids, ts, id
FROM incidents FINAL
WHERE {_range("ts")} AND {_INCIDENT_APP}
ORDER BY first_seen DESC, id
LIMIT {{limit:UInt32}}"""),
        View("incident-counts", "incidents", "incidents per day and severity", f"""
SELECT toDate(first_seen) AS day, severity, count() AS incidents,
       sum(violations) AS violations
FROM incidents FINAL
WHERE {_range("ts")} AND {_INCIDENT_APP}
GROUP BY day, severity
ORDER BY day, severity
LIMIT {{limit:UInt32}}"""),
        View("incident-violations", "incidents",
             "the member violations of the latest incidents (limit: incidents)", f"""
WITH latest AS (
    SELECT id, first_seen, violation_ids FROM incidents FINAL
    WHERE {_range("ts")} AND {_INCIDENT_APP}
    ORDER BY first_seen DESC, id
    LIMIT {{limit:UInt32}}
)
SELECT m.id AS incident_id, v.ts AS ts, v.type AS type, v.severity AS severity,
       v.score AS score, v.src_ip AS src_ip, v.dst_namespace AS dst_namespace,
       v.dst_app AS dst_app, v.dst_ip AS dst_ip, v.dst_port AS dst_port, v.proto AS proto,
       v.count AS count, v.reason AS reason, v.id AS id
FROM (SELECT id, first_seen, arrayJoin(violation_ids) AS vid FROM latest) AS m
INNER JOIN (SELECT * FROM violations FINAL) AS v ON v.id = m.vid
ORDER BY m.first_seen DESC, m.id, v.ts, v.id"""),
        View("rules", "candidate_rules", "candidate allow rules per protected app", """
SELECT app, direction, peer, proto, ports, flows, bytes, days_observed, confidence, status,
       first_seen, last_seen, id
FROM candidate_rules FINAL
WHERE last_seen >= toDateTime64({from:Float64}, 3, 'UTC')
  AND first_seen < toDateTime64({to:Float64}, 3, 'UTC')
  AND ({any_app:UInt8} OR app = {app:String} OR app = concat({ns:String}, '/', {app:String})
       OR peer_app = {app:String})
ORDER BY app, direction, peer, proto, id
LIMIT {limit:UInt32}"""),
        View("app-map", "edge_minute", "app-to-app edges with ports, volume and violations", f"""
SELECT src_namespace, src_app, any(src_kind) AS src_kind, dst_namespace, dst_app,
       any(dst_kind) AS dst_kind,
       arraySort(groupUniqArray(64)(concat(if(proto = 6, 'tcp', if(proto = 17, 'udp',
           toString(proto))), '/', toString(service_port)))) AS ports,
       sum(flows) AS flows, sum(bytes) AS bytes, sum(rejected_flows) AS rejected_flows,
       sum(violating_flows) AS violating_flows, countIf(phase = 'audit') > 0 AS learned,
       min(minute) AS first_seen, max(minute) AS last_seen
FROM edge_minute FINAL
WHERE {_range("minute")} AND {_APP}
GROUP BY src_namespace, src_app, dst_namespace, dst_app
ORDER BY flows DESC, src_namespace, src_app, dst_namespace, dst_app
LIMIT {{limit:UInt32}}"""),
        View("audit-progress", "edge_minute", "new edges per app and day during the audit", f"""
SELECT e.1 AS namespace, e.2 AS app, toDate(first) AS day, count() AS new_edges
FROM (
    SELECT src_namespace, src_app, dst_namespace, dst_app, service_port, proto,
           min(minute) AS first
    FROM edge_minute FINAL
    WHERE phase = 'audit' AND {_range("minute")}
    GROUP BY src_namespace, src_app, dst_namespace, dst_app, service_port, proto
)
ARRAY JOIN [(src_namespace, src_app), (dst_namespace, dst_app)] AS e
WHERE e.2 NOT IN ('world', 'overflow')
  AND ({{any_app:UInt8}} OR (e.2 = {{app:String}} AND ({{ns:String}} = '' OR e.1 = {{ns:String}})))
GROUP BY namespace, app, day
ORDER BY namespace, app, day
LIMIT {{limit:UInt32}}"""),
        View("readiness", "app_readiness",
             "per app: new edges per audit day, quiet days in a row, ready to enforce (or the "
             "last day with too many new edges)", f"""
SELECT namespace, app, toDate(min(day)) AS first_day, toDate(max(day)) AS last_day,
       sum(new_edges) AS edges,
       if(countIf(new_edges > mx) > 0, toUnixTimestamp(maxIf(day, new_edges > mx)) + 86400,
          toUnixTimestamp(min(day))) AS quiet_start,
       toUInt32(intDiv(toUnixTimestamp(max(day)) + 86400 - quiet_start, 86400)) AS quiet_days,
       max(need) AS quiet_days_needed, max(mx) AS max_new_edges,
       quiet_days >= quiet_days_needed AS ready,
       if(ready, toDateTime(quiet_start + quiet_days_needed * 86400, 'UTC'), NULL)
           AS ready_since,
       arrayMap(x -> x.2, arraySort(groupArray((day, new_edges)))) AS new_edges_per_day,
       if(countIf(new_edges > mx) > 0, toDate(maxIf(day, new_edges > mx)), NULL)
           AS last_busy_day,
       toUInt32(argMaxIf(new_edges, day, new_edges > mx)) AS last_busy_new_edges
FROM (
    SELECT namespace, app, day, sum(new_edges) AS new_edges, max(max_new_edges) AS mx,
           max(quiet_days_needed) AS need
    FROM app_readiness FINAL
    WHERE {_range("day")}
      AND ({{any_app:UInt8}} OR (app = {{app:String}} AND ({{ns:String}} = ''
           OR namespace = {{ns:String}})))
    GROUP BY namespace, app, day
)
GROUP BY namespace, app
ORDER BY ready, quiet_days, namespace, app
LIMIT {{limit:UInt32}}"""),
        View("rule-coverage", "candidate_rules",
             "per protected app: share of its inbound flows an ingress candidate rule allows", f"""
WITH allow AS (
    SELECT app AS key, proto, groupArray((peer, peer_kind, ports)) AS rules
    FROM candidate_rules FINAL WHERE direction = 'ingress' GROUP BY app, proto
)
SELECT dst_namespace AS namespace, dst_app AS app, sum(edge_flows) AS flows,
       sumIf(edge_flows, covered) AS allowed_flows, count() AS edges,
       countIf(covered) AS allowed_edges,
       round(sumIf(edge_flows, covered) / sum(edge_flows), 4) AS coverage
FROM (
    SELECT dst_namespace, dst_app, edges.flows AS edge_flows,
           arrayExists(r -> has(r.3, service_port) AND (r.1 = src_key
               OR (r.2 != 'workload' AND src_kind NOT IN ('pod', 'service', 'vm'))),
               allow.rules) AS covered
    FROM (
        SELECT src_namespace, src_app, any(src_kind) AS src_kind, dst_namespace, dst_app,
               service_port, proto, sum(flows) AS flows,
               if(src_namespace = '', src_app, concat(src_namespace, '/', src_app)) AS src_key,
               if(dst_namespace = '', dst_app, concat(dst_namespace, '/', dst_app)) AS dst_key
        FROM edge_minute FINAL
        WHERE {_range("minute")} AND {_APP} AND dst_app NOT IN ('world', 'overflow')
        GROUP BY src_namespace, src_app, dst_namespace, dst_app, service_port, proto
    ) AS edges
    LEFT JOIN allow ON allow.key = edges.dst_key AND allow.proto = edges.proto
)
GROUP BY namespace, app
ORDER BY coverage, flows DESC, namespace, app
LIMIT {{limit:UInt32}}"""),
        View("would-block", "simulation_results",
             "edges the latest policy simulation would block, busiest first", f"""
WITH latest AS (
    SELECT run_id FROM simulation_results FINAL ORDER BY ran_at DESC, run_id LIMIT 1
)
SELECT src_namespace, src_app, dst_namespace, dst_app, service_port, proto, flows, bytes,
       first_seen, last_seen, plane, reason, policy_source, env, window_from, window_to, run_id
FROM simulation_results FINAL
WHERE run_id IN (SELECT run_id FROM latest) AND verdict = 'blocked'
  AND last_seen >= toDateTime64({{from:Float64}}, 3, 'UTC')
  AND first_seen < toDateTime64({{to:Float64}}, 3, 'UTC') AND {_APP}
ORDER BY flows DESC, src_namespace, src_app, dst_namespace, dst_app, service_port, proto
LIMIT {{limit:UInt32}}"""),
    )
}


def table_exists(store: Any, table: str) -> bool:
    rows = store.query_rows(
        "SELECT count() FROM system.tables "
        "WHERE database = currentDatabase() AND name = {t:String}",
        {"t": table})
    return bool(rows and rows[0][0])


def run_view(store: Any, name: str, flt: QueryFilter) -> pa.Table:
    """The view's rows as Arrow; StorageError naming the fix when its table is missing."""
    try:
        view = VIEWS[name]
    except KeyError:
        raise StorageError(f"no view {name!r}; choose one of {', '.join(VIEWS)}") from None
    if not table_exists(store, view.table):
        raise StorageError(f"this store has no {view.table} table; "
                           "run `segflow migrate --store URL` (or replay into it) first")
    return store.query_arrow(view.sql, flt.parameters())


def describe() -> Mapping[str, str]:
    """View name → one-line description (for help text)."""
    return {name: v.description for name, v in VIEWS.items()}


__all__ = ["VIEWS", "QueryFilter", "View", "describe", "run_view", "table_exists"]
