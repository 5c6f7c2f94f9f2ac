"""What each principal may do: one policy per route of the URL table.

- ``admin``: everything.
- ``operator``: everything but deleting runners (alone or in bulk) and reading the audit trail.
- ``viewer``: read only.
- ``registrar``: only ``POST /api/runners/register``.
- a runner token: the agent-facing routes of its own runner (heartbeat, events, channel, announce) and reading
  its own runner (``GET /api/runners/{id}``), nothing else.

A route missing from :data:`ROUTES` is admin-only: a new route is closed until someone says who may call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from coordinator.auth import Principal, Role
from shared.errors import AuthorizationFailed


@dataclass(frozen=True)
class Policy:
    name: str
    roles: frozenset[Role]
    """Roles allowed on any runner."""
    own_runner: bool = False
    """A runner token is allowed too, on its own runner's path only."""


PUBLIC = Policy("public", frozenset())
READ = Policy("read", frozenset({"admin", "operator", "viewer"}))
OWN_RUNNER_READ = Policy("read", frozenset({"admin", "operator", "viewer"}), own_runner=True)
WRITE = Policy("write", frozenset({"admin", "operator"}))
ADMIN = Policy("admin", frozenset({"admin"}))
REGISTER = Policy("register", frozenset({"admin", "operator", "registrar"}))
AGENT = Policy("agent", frozenset({"admin", "operator"}), own_runner=True)
USER = Policy("user", frozenset({"admin", "operator", "viewer"}))

R = "/api/runners/{runner_id}"
ROUTES: dict[tuple[str, str], Policy] = {
    ("GET", "/api/health"): PUBLIC,
    ("GET", "/api/openapi.json"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/api/runners/register"): REGISTER,
    ("GET", "/api/runners/ws"): READ,
    ("POST", "/api/runners/bulk"): WRITE,  # operation "delete" needs admin: checked with the body, see bulk.py
    ("GET", "/api/runners"): READ,
    ("GET", R): OWN_RUNNER_READ,
    ("PUT", R): WRITE,
    ("DELETE", R): ADMIN,
    ("GET", f"{R}/status"): READ,
    ("GET", f"{R}/health"): READ,
    ("GET", f"{R}/metrics"): READ,
    ("POST", f"{R}/jobs"): WRITE,
    ("GET", f"{R}/jobs"): READ,
    ("GET", f"{R}/jobs/{{job_id}}"): READ,
    ("POST", f"{R}/jobs/{{job_id}}/cancel"): WRITE,
    ("GET", f"{R}/config"): READ,
    ("PUT", f"{R}/config"): WRITE,
    ("POST", f"{R}/start"): WRITE,
    ("POST", f"{R}/stop"): WRITE,
    ("POST", f"{R}/restart"): WRITE,
    ("GET", f"{R}/logs"): READ,
    # Agent-facing.
    ("POST", f"{R}/heartbeat"): AGENT,
    ("POST", f"{R}/events"): AGENT,
    ("POST", f"{R}/announce"): AGENT,
    ("GET", f"{R}/channel"): AGENT,
    # Jobs without their runner: routed by tags, found by id.
    ("POST", "/api/jobs"): WRITE,
    ("GET", "/api/jobs"): READ,
    ("GET", "/api/jobs/{job_id}"): READ,
    ("POST", "/api/jobs/{job_id}/cancel"): WRITE,
    # Credentials and the trail.
    ("POST", "/api/tickets"): USER,
    ("GET", "/api/whoami"): USER,
    # The dashboard's sign-in (its page and files are public: coordinator.middlewares.DASHBOARD_FILES).
    ("POST", "/api/session"): USER,
    ("DELETE", "/api/session"): USER,
    ("GET", "/api/audit"): ADMIN,
}


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def policy_for(method: str, route: str) -> Policy:
    return ROUTES.get(("GET" if method == "HEAD" else method, route), ADMIN)


def allowed(principal: Principal, policy: Policy, runner_id: str | None) -> bool:
    if principal.role == "runner":
        return policy.own_runner and runner_id is not None and runner_id == principal.runner_id
    return principal.role in policy.roles


def authorize(request: web.Request, principal: Principal) -> None:
    route = route_of(request)
    policy = policy_for(request.method, route)
    if allowed(principal, policy, request.match_info.get("runner_id")):
        return
    if principal.role == "runner":
        raise AuthorizationFailed(
            "A runner token may only be used on its own runner's agent routes and to read its own runner",
            route=route,
            method=request.method,
        )
    needed: list[str] = sorted(policy.roles) or ["a runner token"]
    raise AuthorizationFailed(
        f"The {principal.role} role may not call {request.method} {route}; it needs: {', '.join(needed)}",
        route=route,
        method=request.method,
        role=principal.role,
    )


def require_admin(request: web.Request, principal: Principal | None, what: str) -> None:
    """For a decision that depends on the body (bulk delete): only admins."""
    if principal is not None and principal.role != "admin":
        raise AuthorizationFailed(f"Only the admin role may {what}", role=principal.role, route=route_of(request))
