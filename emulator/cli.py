"""``presence-emulator``: run the Genesys Cloud emulator on one port until interrupted."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer
from aiohttp import web

from emulator.config import (
    EmulatorConfig,
    Limits,
    OrgSpec,
    WorldShape,
    org_client_id,
    org_client_secret,
    parse_org,
)
from emulator.server import build_app

READY_PREFIX = "presence-emulator ready at "

cli = typer.Typer(add_completion=False, help=__doc__)


async def serve(config: EmulatorConfig) -> None:
    """Serve until SIGINT/SIGTERM; prints the ready line (base URL) and the credentials."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    server = site._server  # the bound port, when port 0 was asked for
    if not isinstance(server, asyncio.Server) or not server.sockets:
        raise RuntimeError("the emulator's listening socket did not open")
    port = server.sockets[0].getsockname()[1]
    base = f"http://{config.host}:{port}"
    print(f"{READY_PREFIX}{base}", flush=True)
    print(f"  client id:     {config.client_id}", flush=True)
    print(f"  client secret: {config.client_secret}", flush=True)
    print(
        f"  users: {config.world.users}  queues: {config.world.queues}  seed: {config.world.seed}",
        flush=True,
    )
    print(f"  admin API: {base}/__emulator   WFM sink: {base}/__wfm/events", flush=True)
    for spec in config.orgs:
        shape = spec.shape(config.world)
        print(
            f"  org {spec.name}: client id {org_client_id(spec.name)}"
            f"  client secret {org_client_secret(spec.name)}"
            f"  users: {shape.users}  queues: {shape.queues}"
            + ("  (user ids shared with default)" if config.shared_user_ids else ""),
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


@cli.command()
def run(
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback by default.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port for HTTP and WebSocket; 0 picks a free one.")
    ] = 8080,
    users: Annotated[int, typer.Option(min=1, help="Agents in the seeded org.")] = 1000,
    queues: Annotated[int, typer.Option(min=0, help="Routing queues in the seeded org.")] = 20,
    seed: Annotated[int, typer.Option(help="Same seed, same org.")] = 42,
    client_id: Annotated[
        str, typer.Option(help="OAuth client id with every permission.")
    ] = "presence-worker",
    client_secret: Annotated[str, typer.Option(help="That client's secret.")] = "emulator-secret",  # noqa: S107
    token_lifetime: Annotated[int, typer.Option(min=1, help="Token lifetime, seconds.")] = 86_400,
    rate_limit: Annotated[
        int, typer.Option(min=0, help="Requests per rolling minute per token; 0 = off.")
    ] = 300,
    bulk_max: Annotated[int, typer.Option(min=1, help="Users per bulk presence PUT.")] = 50,
    heartbeat: Annotated[
        float, typer.Option(min=0.05, help="Socket heartbeat interval, seconds.")
    ] = 30.0,
    channel_ttl: Annotated[
        float, typer.Option(min=1, help="Channel lifetime without re-subscribing, seconds.")
    ] = 86_400.0,
    token_bound_channels: Annotated[
        bool, typer.Option(help="Close a channel when the token that created it ends.")
    ] = True,
    wfm_secret: Annotated[
        str, typer.Option(help="HMAC key the WFM sink verifies signatures with.")
    ] = "wfm-sink-secret",  # noqa: S107
    org: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve one more org beside 'default' (repeatable): "
            "NAME[,users=N][,queues=N][,seed=N][,rate-limit=N]; its client is "
            "presence-worker-NAME / emulator-secret-NAME."
        ),
    ] = None,
    orgs: Annotated[
        int, typer.Option(min=0, help="Serve N more orgs named org1..orgN (after any --org).")
    ] = 0,
    shared_user_ids: Annotated[
        bool, typer.Option(help="Every extra org's users carry default's user ids.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "WARNING",
) -> None:
    """Start the emulator and print its base URL and credentials when ready."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        specs = [parse_org(text) for text in org or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--org") from None
    taken = {spec.name for spec in specs}
    specs += [OrgSpec(f"org{n}") for n in range(1, orgs + 1) if f"org{n}" not in taken]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise typer.BadParameter("each org name may be given once", param_hint="--org")
    config = EmulatorConfig(
        host=host,
        port=port,
        world=WorldShape(users=users, queues=queues, seed=seed),
        limits=Limits(
            token_lifetime_s=token_lifetime,
            rate_limit_per_minute=rate_limit,
            bulk_max=bulk_max,
            heartbeat_s=heartbeat,
            channel_ttl_s=channel_ttl,
            token_bound_channels=token_bound_channels,
        ),
        client_id=client_id,
        client_secret=client_secret,
        wfm_secret=wfm_secret,
        orgs=tuple(specs),
        shared_user_ids=shared_user_ids,
    )
    asyncio.run(serve(config))


def main() -> None:
    cli()
