"""The application catalogue the estate is drawn from: tiers, ports and who calls whom."""

from __future__ import annotations

from dataclasses import dataclass

# tier -> default service port (db/queue ports depend on the engine)
METRICS_PORT = 9090
CACHE_PORT = 6379
DNS_PORT = 53
LOKI_PORT = 3100
DB_PORTS = {"postgres": 5432, "mysql": 3306}
QUEUE_PORTS = {"kafka": 9092, "rabbitmq": 5672}
LEGACY_DB_PORT = 1521
PUBLIC_PORT = 443  # web tiers listen here for the internet
PROBE_PORTS = (22, 23, 25, 80, 135, 139, 445, 1433, 2375, 3389, 5900, 6379, 8080, 9200, 11211)


@dataclass(frozen=True)
class AppTemplate:
    """One business application: a group of tier workloads ``<name>-<tier>`` in a namespace."""

    name: str
    namespace: str
    tiers: tuple[str, ...]  # subset of web, api, worker, db, cache, queue
    db: str = "postgres"
    queue: str = "kafka"
    api_port: int = 8080
    calls: tuple[str, ...] = ()  # apps whose api this app's api calls
    consumes: tuple[str, ...] = ()  # apps whose queue this app consumes
    reads: tuple[str, ...] = ()  # apps whose db this app reads (reporting replicas)
    dual_stack: bool = False  # pods also get an fd00::/8 address
    egress: bool = False  # api calls the partner gateway 203.0.113.10:443
    legacy: bool = False  # api uses the legacy VM database


CATALOG: tuple[AppTemplate, ...] = (
    AppTemplate(
        "storefront", "shop", ("web", "api", "cache"),
        calls=("catalog", "cart", "orders", "auth", "search", "recommendations"), dual_stack=True,
    ),
    AppTemplate(
        "orders", "shop", ("api", "db", "queue"), calls=("payments", "auth", "shipping", "users"),
    ),
    AppTemplate(
        "payments", "payments", ("api", "db"), api_port=443, calls=("fraud", "auth", "ledger"),
        egress=True,
    ),
    AppTemplate("auth", "identity", ("api", "db", "cache"), calls=("users",)),
    AppTemplate("catalog", "shop", ("api", "db", "cache"), db="mysql", calls=("search",)),
    AppTemplate("reporting", "analytics", ("api", "db"), consumes=("orders",), reads=("orders",)),
    AppTemplate("cart", "shop", ("api", "cache"), calls=("catalog", "auth")),
    AppTemplate(
        "billing", "payments", ("api", "db", "queue"), db="mysql", queue="rabbitmq",
        calls=("payments", "users"), legacy=True,
    ),
    AppTemplate("users", "identity", ("api", "db"), db="mysql"),
    AppTemplate("etl", "analytics", ("worker", "queue"), consumes=("orders", "billing"),
                reads=("shipping",)),
    AppTemplate("shipping", "shop", ("api", "db"), consumes=("orders",)),
    AppTemplate("fraud", "payments", ("api", "cache"), calls=("users",)),
    AppTemplate("search", "shop", ("web", "api", "cache"), calls=("catalog",)),
    AppTemplate("notifications", "identity", ("worker", "queue"), queue="rabbitmq",
                consumes=("billing",)),
    AppTemplate("ledger", "payments", ("api", "db"), api_port=443, legacy=True),
    AppTemplate("recommendations", "analytics", ("api", "cache"), calls=("catalog",),
                consumes=("orders",)),
)
GENERIC_NAMESPACES = ("shop", "payments", "identity", "analytics")


def app_templates(n: int) -> list[AppTemplate]:
    """The first ``n`` catalogue apps, padded with generic ``svcNN`` api+db apps."""
    out = list(CATALOG[:n])
    for i in range(len(out), n):
        ns = GENERIC_NAMESPACES[i % len(GENERIC_NAMESPACES)]
        db = "postgres" if i % 2 else "mysql"
        peers = tuple(t.name for t in CATALOG[(i % 5) :: 5][:2])
        out.append(AppTemplate(f"svc{i:02d}", ns, ("api", "db"), db=db, calls=(*peers, "auth")))
    return out


__all__ = [
    "CACHE_PORT",
    "CATALOG",
    "DB_PORTS",
    "DNS_PORT",
    "LEGACY_DB_PORT",
    "LOKI_PORT",
    "METRICS_PORT",
    "PROBE_PORTS",
    "PUBLIC_PORT",
    "QUEUE_PORTS",
    "AppTemplate",
    "app_templates",
]
