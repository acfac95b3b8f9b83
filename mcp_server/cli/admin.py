"""`ariel admin …`: the install's operator acting on its orgs (`mcp_server.services.admin`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from contextlib import AsyncExitStack

from mcp_server.cli.progress import slow_step
from mcp_server.services.admin import AdminService, OrgLimits, OrgSummary, describe_limits, month_start
from mcp_server.services.exceptions import InvalidRequest
from mcp_server.settings import ArielSettings

DEFAULT = "default"


def run_admin(settings: ArielSettings, args: argparse.Namespace) -> int:
    action = args.admin_command
    if action == "delete" and not args.yes:
        if not sys.stdin.isatty():
            raise InvalidRequest("delete: give --yes to delete without being asked (no terminal to ask on)")
        try:
            typed = input(f"This deletes {args.org!r} with everything it owns, for good. Type its slug to go on: ")
        except EOFError:  # Ctrl-D: no answer
            typed = ""
        if typed.strip() != args.org:
            print("ariel admin delete: not the slug; nothing was deleted", file=sys.stderr)
            return 1
    limits = _limits(args) if action == "limits" else None
    print(asyncio.run(_admin(settings, args, limits)))
    return 0


async def _admin(settings: ArielSettings, args: argparse.Namespace, limits: dict[str, object] | None) -> str:
    from mcp_server.cli.stack import running_stack

    api_url, pool_type = running_stack(settings)
    async with AsyncExitStack() as stack:
        with slow_step("reaching the store and the Prefect API"):
            from mcp_server.services.container import open_services

            services = await stack.enter_async_context(open_services(settings, api_url, pool_type))
        admin = AdminService(services.orgs, operator=_login())
        match args.admin_command:
            case "orgs":
                since = month_start()
                with slow_step("reading the orgs and this month's runs"):
                    found = await admin.summaries(args.orgs, since)
                return _table(found, since.strftime("%Y-%m-%d"), admin.memory_default)
            case "suspend":
                with slow_step(f"suspending {args.org!r}: pausing its schedules and work pools"):
                    return await admin.suspend(args.org, args.reason)
            case "resume":
                with slow_step(f"resuming {args.org!r}"):
                    return await admin.resume(args.org)
            case "limits":
                if limits is None:  # nothing to set: what holds now
                    return await admin.limits_of(args.org)
                with slow_step(f"setting the limits of {args.org!r} on its work pools"):
                    return await admin.set_limits(args.org, limits)
            case _:
                return await admin.delete(args.org, lambda line: print(f"  {line}", flush=True))
    raise AssertionError("unreachable: every action returns")


def _limits(args: argparse.Namespace) -> dict[str, object] | None:
    """The limits `ariel admin limits` was given ('default': None, the install's); None when none was given."""
    given: dict[str, object] = {}
    if args.concurrent_runs is not None:
        given["max_concurrent_runs"] = _number(args.concurrent_runs, "--concurrent-runs", int)
    if args.memory is not None:
        given["memory_limit"] = None if args.memory == DEFAULT else args.memory
    if args.cpus is not None:
        given["cpus"] = _number(args.cpus, "--cpus", float)
    return given or None


def _number(text: str | None, option: str, kind: type[int] | type[float]) -> int | float | None:
    if text is None or text == DEFAULT:
        return None
    try:
        return kind(text)
    except ValueError:
        raise InvalidRequest(f"{option}: {text!r} is not a {'whole ' if kind is int else ''}number, nor 'default'") \
            from None


def _table(found: list[OrgSummary], since: str, memory_default: str) -> str:
    if not found:
        return "no orgs in this install yet"
    header = ("ORG", "NAME", "STATUS", "MEMBERS", "AGENTS", "RUNS", "FAILED", "TOKENS", "COST", "LIMITS")
    rows = [header]
    for summary in found:
        org, usage = summary.org, summary.usage
        status = "active" if org.suspended_at is None else (
            f"suspended {org.suspended_at:%Y-%m-%d}" + (f" ({org.suspended_reason})" if org.suspended_reason else ""))
        cost = f"${usage.cost_usd:.2f}" + (f" +{usage.unpriced} unpriced" if usage.unpriced else "")
        limits = "defaults" if (org.max_concurrent_runs, org.memory_limit, org.cpus) == (None, None, None) else (
            describe_limits(OrgLimits(org.max_concurrent_runs, org.memory_limit, org.cpus), memory_default))
        rows.append((org.slug, org.name, status, str(summary.members), str(summary.agents), str(usage.runs),
                     str(usage.failed), f"{usage.prompt_tokens + usage.completion_tokens:,}", cost, limits))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]
    return "\n".join([f"Orgs of this install; runs, tokens and cost since {since} (UTC):", *lines])


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (a container's numeric user)
        return "unknown"
