"""The `hubbub` command: serve, check-config, token, config-doc.

Exit codes: 0 success; 1 the node could not start (address in use, start-up failed) or, for
`check-config`, production configuration with warnings; 2 a configuration or usage error.
No command prints a traceback for a mistake of its user.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hubbub import __version__

try:
    from hubbub.loader import load_settings
    from hubbub.preflight import preflight
    from hubbub.settings import Settings, SettingsError
except ModuleNotFoundError as exc:  # installed with the `client` extra only: say so instead of a traceback
    _MISSING: ModuleNotFoundError | None = exc
else:
    _MISSING = None

log = logging.getLogger("hubbub")

#: Ten years: beyond it, a token that expires is not meaningfully different from one that does not.
MAX_TTL = 10 * 365 * 86400
#: The usual exit status of a program whose output pipe was closed early (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A flag's value is wrong; the message names the flag."""


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    flags = {"host": args.host, "port": args.port, "log_level": args.log_level, "log_format": args.log_format}
    settings = _settings(args, **flags)
    plan = preflight(settings)
    from hubbub import logs, server  # the server's imports only once the configuration is known to be good

    logs.configure(settings)
    given = [name for name, value in flags.items() if value is not None]
    summary = logs.summary(settings, env=logs.env_names(os.environ), flags=given)
    try:
        return server.run(plan, summary=summary)
    except server.StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        plan = preflight(settings)
    except SettingsError as exc:
        _print_error(str(exc))
        print("configuration invalid: `hubbub serve` would refuse to start with it", file=sys.stderr)
        return 2
    mode = "development" if settings.development else "production"
    source = f", file {settings.config_file}" if settings.config_file else ""
    for finding in plan.warnings:
        print(f"warning: {finding}")
    if plan.warnings and not settings.development:
        count = len(plan.warnings)
        print(f"configuration loads, but has {count} warning{'s' * (count != 1)} ({mode} mode{source})")
        return 1
    print(f"configuration OK ({mode} mode{source})")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from hubbub.auth import MAX_INFO_BYTES, mint_token

    if args.no_expiry and args.ttl is not None:
        raise UsageError("--ttl and --no-expiry: give one of them")
    ttl = None if args.no_expiry else (3600.0 if args.ttl is None else args.ttl)
    if ttl is not None and not (1 <= ttl <= MAX_TTL):
        raise UsageError(
            f"--ttl must be 1 to {MAX_TTL} seconds (got {args.ttl:g}); --no-expiry for a token without one"
        )
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError as exc:
            raise UsageError(f'--info must be a JSON object, e.g. \'{{"name": "Alice"}}\' ({exc})') from None
        if not isinstance(info, dict):
            raise UsageError('--info must be a JSON object, e.g. \'{"name": "Alice"}\'')
        if len(json.dumps(info, separators=(",", ":")).encode()) > MAX_INFO_BYTES:
            raise UsageError(f"--info must encode to at most {MAX_INFO_BYTES} bytes")
    if not args.sub or len(args.sub) > 255:
        raise UsageError("--sub must be 1-255 characters")
    settings = _settings(args)
    secret = settings.effective_jwt_secret()
    if secret is None:
        raise SettingsError(
            "no jwt_secret configured to sign tokens with (set HUBBUB_JWT_SECRET or jwt_secret in the config "
            "file); with a public key or JWKS, tokens come from your identity provider"
        )
    token = mint_token(
        secret,
        sub=args.sub,
        rooms=args.rooms if args.rooms is not None else ["*"],
        publish=args.publish or [],
        ttl=ttl,
        info=info,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    print(token)
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


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hubbub", description="Real-time messaging over WebSockets.")
    top.add_argument("--version", action="version", version=f"hubbub {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config file (.yaml, .yml, .json or .toml); also HUBBUB_CONFIG. Without one: development mode",
        )
        return p

    serve = with_config(
        sub.add_parser(
            "serve",
            help="run the service",
            description="Run the service. Settings come from the config file, HUBBUB_* variables and these flags.",
        )
    )
    serve.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1; 0.0.0.0 in a pod)")
    serve.add_argument("--port", type=int, default=None, help="TCP port to listen on (default 8000)")
    serve.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"], help="log level (default info)"
    )
    serve.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="log line format (default text; json: one object a line)",
    )
    serve.set_defaults(func=cmd_serve)

    check = with_config(
        sub.add_parser(
            "check-config",
            help="validate the configuration as `serve` would, without starting",
            description=(
                "Load and check the configuration exactly as `serve` does (keys parsed, files read, URLs parsed), "
                "without listening or connecting. Exit 0: OK; 1: production configuration with warnings; "
                "2: `serve` would refuse it."
            ),
        )
    )
    check.set_defaults(func=cmd_check_config)

    token = with_config(
        sub.add_parser(
            "token",
            help="print a JWT signed with the configured secret (for development and tests)",
            description="Print an HS256 JWT signed with jwt_secret (the development secret in development mode).",
        )
    )
    token.add_argument("--sub", default="dev", help="user id, the token's `sub` (default: dev)")
    token.add_argument(
        "--rooms",
        action="append",
        default=None,
        help="room glob the user may join, e.g. 'chat:*' (repeatable; default: every room)",
    )
    token.add_argument(
        "--publish", action="append", default=None, help="room glob the user may publish to (repeatable; default: none)"
    )
    token.add_argument("--ttl", type=_seconds, default=None, help="seconds until the token expires (default 3600)")
    token.add_argument("--no-expiry", action="store_true", help="a token without `exp` that never expires")
    token.add_argument("--info", default=None, help='JSON object others see in presence, e.g. \'{"name": "Alice"}\'')
    token.set_defaults(func=cmd_token)

    doc = sub.add_parser(
        "config-doc",
        help="print the settings reference as markdown",
        description="Print the settings table of docs/configuration.md, generated from the settings model.",
    )
    doc.set_defaults(func=cmd_config_doc)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if _MISSING is not None:
        print(
            f"error: the hubbub command needs the server extra ({_MISSING.name} is not installed): "
            "pip install 'hubbub[server]'",
            file=sys.stderr,
        )
        return 2
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except (SettingsError, UsageError) as exc:
        _print_error(str(exc))
        return 2
    except BrokenPipeError:
        # The reader went away (`hubbub config-doc | head`): nothing to say, and nowhere to say it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result


def _print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
