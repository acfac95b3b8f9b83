"""The `ariel` command."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from mcp_server.cli.errors import for_people
from mcp_server.cli.processes import stop_on_signals
from mcp_server.cli.progress import slow_step
from mcp_server.settings import ArielSettings

if TYPE_CHECKING:
    from deployments.pools.work_pools import PoolType
    from mcp_server.services.caller import Caller
    from mcp_server.services.container import Services


def main(argv: list[str] | None = None) -> int:
    # Before anything imports litellm: it otherwise fetches a price map from the internet, and (in its default DEV
    # mode) loads a `.env` file found above its own folder into this process, whose gateway calls tenants' models.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    parser = argparse.ArgumentParser(prog="ariel", description="Workflow orchestration for AI agents, on Prefect 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start Prefect, a worker and the MCP server; Ctrl-C stops all")
    up.add_argument("--port", type=int, help="port of the HTTP app (MCP at /mcp); default ARIEL_PORT or 8765")
    up.add_argument("--worker-type", choices=["auto", "docker", "process"], help="work pool type; default auto")
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP app alone (MCP, the Prefect gateway) on a running Prefect server: for installs whose "
        "parts run apart; the pool host runs as `ariel pool-host`",
    )
    serve.add_argument("--port", type=int, help="port of the HTTP app (MCP at /mcp); default ARIEL_PORT or 8765")
    pool_host = commands.add_parser(
        "pool-host",
        help="run Ariel's workers for every org's pools of an install whose app runs as `ariel serve`, through its "
        "Prefect gateway (key: ARIEL_POOL_HOST_KEY, the same as the app's)",
    )
    pool_host.add_argument("--server", required=True, help="the app's address as this machine reaches it, e.g. "
                           "http://ariel-app:8765")
    commands.add_parser("mcp", help="serve MCP over stdio, for desktop MCP clients")
    commands.add_parser("migrate", help="apply the store's pending migrations")
    build_image = commands.add_parser(
        "build-image", help="build the runtime image (or, with `compose`, every image of docker/compose.yaml) if "
        "missing or older than the code"
    )
    build_image.add_argument(
        "images", nargs="?", choices=["runtime", "compose"], default="runtime",
        help="runtime: the image flow runs run in (default); compose: that, the app image and PostgreSQL's",
    )
    key = commands.add_parser(
        "create-key",
        help="issue an API key for an org (made if missing, owned by --owner): how the first admin of a "
        "server in api_key or oidc mode gets in",
    )
    key.add_argument("org", help="the org's slug, e.g. acme")
    key.add_argument("--owner", required=True, help="email or login of the person the key acts for")
    key.add_argument("--role", default="owner", choices=["owner", "admin", "member", "viewer"])
    key.add_argument("--name", default="bootstrap", help="a name to tell the key apart")
    provider = commands.add_parser(
        "provider", help="set, list or delete the LLM provider keys an org's agents use (needs a running `ariel up`)"
    )
    provider.add_argument("action", choices=["set", "list", "delete"])
    provider.add_argument("name", nargs="?", help="set, delete: the provider's name, e.g. openai-main")
    provider.add_argument("--org", help="the org's slug; default: your own (the local user's current org)")
    provider.add_argument("--api-base", help="set: base URL of a self-hosted or OpenAI-compatible server")
    provider.add_argument("--yes", action="store_true", help="delete: even when agents name it")
    secrets = commands.add_parser(
        "secrets",
        help="sealed secrets: `rotate` makes a new key-encryption key (KEK) current and re-wraps every org's data "
        "key under it",
        description="rotate: make a new KEK current (in ARIEL_KEK_FILE, default ARIEL_HOME/keys/kek; the old one "
        "is kept beside it as kek.<id>) and re-wrap every org's data key under it, one transaction per org. Sealed "
        "secrets are not re-encrypted. Needs the store, not a running `ariel up` (which sees the new key at its "
        "next use). Once every org is re-wrapped the old KEK unwraps nothing: retire it by deleting the kek.<id> "
        "file it names (or dropping it from ARIEL_KEK_PREVIOUS).",
    )
    secrets.add_argument("action", choices=["rotate"])
    secrets.add_argument(
        "--keep-key", action="store_true",
        help="make no new KEK; re-wrap under the current one (after setting a new ARIEL_KEK, rotating a KMS key, or "
        "to finish a rotation that failed for some orgs)",
    )
    worker_key = commands.add_parser(
        "worker-key", help="create, list or revoke the worker keys of an org's own hardware (see `ariel worker`)"
    )
    worker_key.add_argument("action", choices=["create", "list", "revoke"])
    worker_key.add_argument("name", nargs="?", help="create: a name for the key, e.g. office-server; revoke: its "
                            "id or prefix")
    worker_key.add_argument("--org", help="the org's slug; default: your own (the local user's current org)")
    worker = commands.add_parser(
        "worker",
        help="run agents on this machine: a Docker worker for your org's own hardware, through the server's "
        "Prefect gateway",
    )
    worker.add_argument("--server", required=True, help="Ariel's address, e.g. https://ariel.example.com")
    worker.add_argument("--key", help="the worker key (ariel_wk_...); default ARIEL_WORKER_KEY, which keeps it out "
                        "of `ps` and shell history")
    _add_admin(commands)
    args = parser.parse_args(argv)
    if args.command == "worker":
        # Needs no settings of a server: it talks to one over HTTP only.
        from mcp_server.cli.worker import WorkerFailed, run_worker

        stop_on_signals()  # as for `up`: it supervises a child, which a Ctrl-C must stop within 10 s
        try:
            run_worker(args.server, args.key)
        except WorkerFailed as exc:
            print(f"ariel worker: {exc}", file=sys.stderr)
            return 1
    if args.command in ("up", "serve", "pool-host"):
        # First thing: a SIGINT inherited ignored (a background job, `nohup ariel up &`) must still stop it.
        stop_on_signals()

    overrides = {key: value for key, value in (("port", getattr(args, "port", None)),
                                                ("worker_type", getattr(args, "worker_type", None))) if value}
    try:
        settings = ArielSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = f"ARIEL_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
            print(f"ariel: {name}: {str(error['msg']).removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    try:
        return _run(args.command, settings, args)
    except KeyboardInterrupt:
        return 130


def _run(command: str, settings: ArielSettings, args: argparse.Namespace) -> int:
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, no permission, a read-only disk
        print(f"ariel {command}: ARIEL_HOME ({settings.home}) cannot be used as Ariel's folder: "
              f"{exc.strerror or type(exc).__name__}; set ARIEL_HOME to a folder you may write", file=sys.stderr)
        return 1
    try:
        if command == "up":
            from mcp_server.cli.stack import up

            up(settings)
        elif command == "serve":
            from mcp_server.cli.stack import serve

            serve(settings)
        elif command == "pool-host":
            from mcp_server.cli.pool_host import run_pool_host
            from mcp_server.cli.worker import WorkerFailed

            try:
                run_pool_host(settings, args.server)
            except WorkerFailed as exc:
                print(f"ariel pool-host: {exc}", file=sys.stderr)
                return 1
        elif command == "mcp":
            _serve_stdio(settings)
        elif command == "create-key":
            with slow_step(f"issuing the key (opening the store at {settings.store_label} first)"):
                text = asyncio.run(_create_key(settings, args.org, args.owner, args.role, args.name))
            print(text)
        elif command == "provider":
            print(asyncio.run(_provider(settings, args)))
        elif command == "worker-key":
            with slow_step("reaching the store and the Prefect API of the running `ariel up`"):
                text = asyncio.run(_worker_key(settings, args))
            print(text)
        elif command == "admin":
            from mcp_server.cli.admin import run_admin

            return run_admin(settings, args)
        elif command == "secrets":
            asyncio.run(_rotate_secrets(settings, args.keep_key))
        elif command == "migrate":
            with slow_step(f"applying the store's migrations at {settings.store_label}"):
                asyncio.run(_migrate(settings))
            print(f"store at {settings.store_label} is up to date")
        elif command == "build-image":
            from deployments.images.runtime_image import RuntimeImageBuilder

            builder = RuntimeImageBuilder(
                tag=settings.runtime_image, base_image=settings.runtime_base_image, catalog=settings.stdio_catalog
            )
            if not builder.ensure():
                print(f"{' and '.join(builder.tags.values())} are up to date")
            if args.images == "compose":
                from deployments.images.compose_images import ComposeImages

                ComposeImages(base_image=settings.runtime_base_image).ensure_all()
    except Exception as exc:
        if not for_people(exc):
            raise
        print(f"ariel {command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_admin(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser(
        "admin", help="the install's operator: list orgs with their usage, suspend and resume them, set their limits, "
        "delete them (never through chat; each action is audited)",
        description="Acts on the store and the Prefect API of this install (those of the running `ariel up`, or "
        "ARIEL_STORE_URL and ARIEL_PREFECT_API_URL), as its operator; each action is written to the org's audit "
        "trail under your login.",
    )
    actions = admin.add_subparsers(dest="admin_command", required=True)
    orgs = actions.add_parser("orgs", help="every org (or those named) with its members, agents, and this month's "
                              "runs, failures, tokens and cost")
    orgs.add_argument("orgs", nargs="*", metavar="ORG", help="org slugs; default: every org")
    suspend = actions.add_parser("suspend", help="refuse the org's keys and sign-ins with a message that says so, "
                                 "and pause its schedules and work pools; nothing is deleted")
    suspend.add_argument("org", help="the org's slug")
    suspend.add_argument("--reason", help="one line shown to the org's members with the refusal")
    resume = actions.add_parser("resume", help="undo a suspension")
    resume.add_argument("org", help="the org's slug")
    limits = actions.add_parser("limits", help="show or set the org's limits, which its work pools enforce; "
                                "'default' restores the install's")
    limits.add_argument("org", help="the org's slug")
    limits.add_argument("--concurrent-runs", metavar="N", help="runs at once (more wait in the queue), or 'default' "
                        "(no limit)")
    limits.add_argument("--memory", metavar="SIZE", help="each run container's memory, e.g. 512m or 2g, or 'default' "
                        "(ARIEL_RUN_MEMORY_LIMIT)")
    limits.add_argument("--cpus", metavar="N", help="each run container's CPUs, e.g. 0.5 or 2, or 'default'")
    delete = actions.add_parser("delete", help="delete the org with everything it owns (agents, schedules, pools, "
                                "runs with their logs and artifacts, transcripts, secrets, members, keys); its audit "
                                "trail stays")
    delete.add_argument("org", help="the org's slug")
    delete.add_argument("--yes", action="store_true", help="do not ask to type the slug again (for scripts)")


def _serve_stdio(settings: ArielSettings) -> None:
    from mcp_server.cli.stack import Runtime
    from mcp_server.services.exceptions import InvalidRequest
    from mcp_server.settings import TRUSTING_PROFILES
    from mcp_server.tools.server import build_mcp

    if settings.profile not in TRUSTING_PROFILES:
        # Over stdio the caller is the machine's local user, with the store's own rights: no credential is checked.
        raise InvalidRequest(
            f"stdio serves the machine's local user with no credential, which a shared install (profile "
            f"{settings.profile!r}) does not allow; connect an MCP client to the app's /mcp with an API key instead"
        )

    runtime = Runtime.load(settings.home)
    api_url = settings.prefect_api_url or (runtime.prefect_api_url if runtime else None)
    if api_url is None or runtime is None:
        raise SystemExit(
            "ariel mcp: start Ariel first with `ariel up` (it records the Prefect API and work pool to use)"
        )
    build_mcp(settings, api_url, runtime.pool_type).run(transport="stdio", show_banner=False)


async def _create_key(settings: ArielSettings, org_slug: str, owner: str, role: str, name: str) -> str:
    from deployments.agents.spec import slugify
    from mcp_server.services.exceptions import InvalidRequest
    from mcp_server.store import Store

    if slugify(org_slug) != org_slug:
        raise InvalidRequest(
            f"org: {org_slug!r} is not a slug; use lowercase letters, digits and '-', e.g. {slugify(org_slug)!r}"
        )
    store = await Store.open(settings.resolved_store_url)
    try:
        user = await store.invitee(owner)
        actor = f"ariel create-key ({owner})"
        org = await store.find_org(org_slug)
        # Membership changes like any other: the trail shows how this owner came in.
        if org is None:
            org = await store.create_org(org_slug, org_slug, user.id)  # with `user` as its owner
            await store.record_event(org.id, actor_id=user.id, actor=actor, action="org.create",
                                     target=f"{org_slug}, owned by {owner}", origin="cli", outcome="ok")
        elif await store.member(org.id, user.id) is None:
            await store.add_member(org.id, user.id, "owner")
            await store.record_event(org.id, actor_id=user.id, actor=actor, action="org.invite",
                                     target=f"{owner} as owner", origin="cli", outcome="ok")
        record, plaintext = await store.create_api_key(org.id, name, role, user.id)  # type: ignore[arg-type]  # argparse choices
        await store.record_event(org.id, actor_id=user.id, actor=actor, action="org.create_key",
                                 target=record.prefix, origin="cli", outcome="ok")
    finally:
        await store.close()
    return (
        f"API key {record.prefix} for {org_slug} ({role}, acting for {owner}); shown this once, store it now:\n"
        f"{plaintext}"
    )


def _running(settings: ArielSettings) -> tuple[str, PoolType]:
    from mcp_server.cli.stack import running_stack

    return running_stack(settings)


async def _host_caller(services: Services, org_slug: str | None, label: str) -> Caller:
    """Who a command on Ariel's host acts as: an owner of `org_slug`, or of the local user's current org.

    Whoever can run it holds the store itself.
    """
    from mcp_server.services.caller import HOST_USER, Caller
    from mcp_server.services.exceptions import NotFound

    if org_slug:
        org = await services.store.find_org(org_slug)
        if org is None:
            raise NotFound(f"no org {org_slug!r} in this installation")
    else:
        local = await services.auth.local_caller("cli")
        org = await services.store.get_org(local.org_id)
        assert org is not None  # the local user's current org exists: local_caller just resolved it
    return Caller(user_id=HOST_USER, user_label=label, org_id=org.id, org_slug=org.slug, org_name=org.name,
                  role="owner", source="local", origin="cli")


async def _provider(settings: ArielSettings, args: argparse.Namespace) -> str:
    from pydantic import SecretStr

    from mcp_server.services.exceptions import InvalidRequest

    api_url, pool_type = _running(settings)
    if args.action != "list" and not args.name:
        raise InvalidRequest(f"provider {args.action} needs the provider's NAME, e.g. `ariel provider {args.action} "
                             "openai-main`")
    key = None
    if args.action == "set":
        # Read before connecting (and before the slow imports: the prompt comes at once), and never from the
        # command line, where `ps` and shell history would keep it.
        key = SecretStr(getpass.getpass(f"API key for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline())
    with slow_step("reaching the store and the Prefect API of the running `ariel up`"):
        from mcp_server.services.container import open_services

        async with open_services(settings, api_url, pool_type) as services:
            caller = await _host_caller(services, args.org, "ariel provider (cli)")
            action = {"set": "set_provider", "list": "list", "delete": "delete_provider"}[args.action]
            view = await services.secrets.manage(caller, action, args.name, key, args.api_base, args.yes)  # type: ignore[arg-type]  # argparse choices
    lines = [view.done]
    lines += [f"  {p.name}  {p.api_base or '(provider default)'}  used by: {', '.join(p.used_by) or 'none'}"
              for p in view.providers if args.action == "list"]
    return "\n".join(lines)


async def _worker_key(settings: ArielSettings, args: argparse.Namespace) -> str:
    from mcp_server.services.container import open_services
    from mcp_server.services.exceptions import InvalidRequest

    api_url, pool_type = _running(settings)
    if args.action != "list" and not args.name:
        what = "a NAME for the key, e.g. office-server" if args.action == "create" else "the key's id or prefix"
        raise InvalidRequest(f"worker-key {args.action} needs {what}")
    async with open_services(settings, api_url, pool_type) as services:
        caller = await _host_caller(services, args.org, "ariel worker-key (cli)")
        action = {"create": "create_worker_key", "list": "list_worker_keys", "revoke": "revoke_worker_key"}[args.action]
        view = await services.orgs.manage(caller, action, None, None,  # type: ignore[arg-type]  # argparse choices
                                          args.name if args.action == "create" else None, None,
                                          args.name if args.action == "revoke" else None, False)
    lines = [view.done]
    for key in view.worker_keys or []:
        lines.append(f"  {key.prefix}  {key.name}  {'revoked' if key.revoked else 'active'}  (id {key.id})")
    if view.start_worker:
        lines += ["", "On the machine that runs the agents (see the README: Run agents on your own hardware):",
                  f"  {view.start_worker}"]
    return "\n".join(lines)


async def _rotate_secrets(settings: ArielSettings, keep_key: bool) -> None:
    from mcp_server.services.exceptions import SealingError
    from mcp_server.services.sealing import LocalKeyring, keyring_from_settings, rotate_keks
    from mcp_server.store import Store

    def say(line: str) -> None:
        print(line, flush=True)

    keyring = keyring_from_settings(settings)
    new_key = not keep_key and isinstance(keyring, LocalKeyring) and not keyring.from_environment
    if not keep_key and not new_key:
        say("The current key-encryption key is ARIEL_KEK or ARIEL_KEK_BACKEND's, which Ariel cannot replace: "
            "re-wrapping under it.")
    store = await Store.open(settings.resolved_store_url)
    try:
        done = await rotate_keks(store, keyring, new_key, say)
    finally:
        await store.close()
    if done.failed:
        raise SealingError(
            f"{len(done.failed)} org(s) keep data keys under an older key-encryption key ({', '.join(done.failed)}); "
            "retire no key yet: fix what is said above, then run `ariel secrets rotate --keep-key`"
        )
    say(f"Done: {sum(done.rewrapped.values())} data key(s) re-wrapped in {len(done.rewrapped)} org(s); every data "
        f"key is wrapped by {done.new_kek}.")
    for key_id, where in done.retirable.items():
        how = (f"delete {where.removeprefix('file ')}" if where.startswith("file ")
               else "drop it from ARIEL_KEK_PREVIOUS")
        say(f"The old key-encryption key {key_id} ({where}) unwraps nothing now: retire it ({how}).")


async def _migrate(settings: ArielSettings) -> None:
    from mcp_server.store import Store

    store = await Store.open(settings.resolved_store_url)
    await store.close()


if __name__ == "__main__":
    raise SystemExit(main())
