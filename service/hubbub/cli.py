"""The `hubbub` command: serve, check-config, token, config-doc."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hubbub import __version__
from hubbub.settings import Settings, SettingsError, load_settings

log = logging.getLogger("hubbub")


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from hubbub import server

    settings = _settings(args, host=args.host, port=args.port, log_level=args.log_level)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.info("hubbub %s listening on http://%s:%d (WebSocket: /ws)", __version__, settings.host, settings.port)
    server.run(settings)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    mode = "development" if settings.development else "production"
    print(f"configuration OK ({mode} mode{', file ' + str(settings.config_file) if settings.config_file else ''})")
    problems = settings.problems()
    for problem in problems:
        print(f"warning: {problem}")
    return 1 if problems and not settings.development else 0


def cmd_token(args: argparse.Namespace) -> int:
    from hubbub.auth import mint_token

    settings = _settings(args)
    secret = settings.effective_jwt_secret()
    if secret is None:
        print("error: no jwt_secret configured (set HUBBUB_JWT_SECRET)", file=sys.stderr)
        return 2
    info = json.loads(args.info) if args.info else None
    rooms = args.rooms if args.rooms is not None else ["*"]
    publish = args.publish if args.publish is not None else ["*"]
    print(
        mint_token(
            secret,
            sub=args.sub,
            rooms=rooms,
            publish=publish,
            ttl=args.ttl if args.ttl > 0 else None,
            info=info,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    )
    return 0


def cmd_config_doc(args: argparse.Namespace) -> int:
    print(config_doc())
    return 0


def config_doc() -> str:
    """The settings table of `docs/configuration.md`, generated from the model's descriptions."""
    from hubbub.settings import ENV_PREFIX, NamespaceOptions

    lines = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name == "config_file":
            continue
        default = "(hostname)" if name == "node_name" else field.get_default(call_default_factory=True)
        lines.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | `{default!r}` | {field.description} |")
    lines += ["", "Namespace options (`namespaces.<name>` and `default_namespace`):", ""]
    lines += ["| option | default | meaning |", "|---|---|---|"]
    for name, field in NamespaceOptions.model_fields.items():
        lines.append(f"| `{name}` | `{field.default!r}` | {field.description} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hubbub", description="Real-time messaging over WebSockets.")
    top.add_argument("--version", action="version", version=f"hubbub {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None, help="YAML, JSON or TOML config file")
        return p

    serve = with_config(sub.add_parser("serve", help="run the service"))
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    check = with_config(sub.add_parser("check-config", help="validate the configuration and report problems"))
    check.set_defaults(func=cmd_check_config)

    token = with_config(sub.add_parser("token", help="print a development JWT signed with the configured secret"))
    token.add_argument("--sub", default="dev", help="user id (default: dev)")
    token.add_argument("--rooms", action="append", default=None, help="room glob the user may join (repeatable)")
    token.add_argument("--publish", action="append", default=None, help="room glob the user may publish to")
    token.add_argument("--ttl", type=float, default=3600, help="seconds until expiry (0: never)")
    token.add_argument("--info", default=None, help="JSON object shown to others in presence")
    token.set_defaults(func=cmd_token)

    doc = sub.add_parser("config-doc", help="print the settings reference as markdown")
    doc.set_defaults(func=cmd_config_doc)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
