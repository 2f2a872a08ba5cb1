"""Command-line options for token validation, shared by the broker and the spawner."""

from __future__ import annotations

import argparse
from pathlib import Path

from rexec.auth import AuthSettings


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--auth-api-url", help="identity provider introspection URL [AUTH_API_URL]")
    auth.add_argument(
        "--auth-method",
        type=str.upper,
        choices=["GET", "POST"],
        help="GET: Bearer header; POST: JSON {token} [REXEC_AUTH_METHOD, GET]",
    )
    auth.add_argument(
        "--token-file", type=Path, help="static token file, hashes only [REXEC_TOKEN_FILE]"
    )
    auth.add_argument(
        "--allowed-groups",
        help="comma-separated groups allowed to use the service [REXEC_ALLOWED_GROUPS]",
    )


def auth_settings_from_args(args: argparse.Namespace) -> AuthSettings:
    """Environment first, then the options that were given."""
    groups = None
    if args.allowed_groups is not None:
        groups = tuple(g.strip() for g in args.allowed_groups.split(",") if g.strip())
    return AuthSettings.from_env(
        api_url=args.auth_api_url,
        api_method=args.auth_method,
        token_file=args.token_file,
        allowed_groups=groups,
    )
