"""``pgwa user``: dashboard users of a tenant (the operator's bootstrap of the first admin).

::

    pgwa user add --tenant T --email E [--role admin|marketer|agent|viewer] [--password-env VAR]
    pgwa user invite --tenant T --email E [--role R] [--base-url URL]   (prints the link once)
    pgwa user list --tenant T

``add`` asks for the password on a terminal (twice), reads it from ``--password-env``, or,
with neither, makes one and prints it once on stdout. The password is hashed here with
argon2 (api/dashboard/passwords.py); PostgreSQL only ever sees the hash.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys

from rich.console import Console
from rich.table import Table

from api.dashboard.passwords import hash_password, password_problem
from api.dashboard.sessions import new_token, token_hash
from pgwa.cli.commands import CliError, _dicts, connect, tenant_id
from pgwa.cli.views import when

ROLES = ("admin", "marketer", "agent", "viewer")
CREATE_USER = "SELECT * FROM api.create_user(%(tenant_id)s, %(email)s, %(role)s, %(password_hash)s)"
INVITE_USER = "SELECT * FROM api.invite_user(%(tenant_id)s, %(email)s, %(role)s, %(token_hash)s)"
USERS = "SELECT * FROM api.dashboard_users(%(tenant_id)s)"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    user = sub.add_parser("user", help="dashboard users").add_subparsers(dest="action", required=True)
    for action in ("add", "invite", "list"):
        u = user.add_parser(action)
        u.add_argument("--tenant")
        if action != "list":
            u.add_argument("--email", required=True)
            u.add_argument("--role", choices=ROLES, default="admin" if action == "add" else "agent")
        if action == "add":
            u.add_argument("--password-env", metavar="VAR", help="the variable holding the password "
                                                                  "(default: ask, or make one)")
        if action == "invite":
            u.add_argument("--base-url", default="http://127.0.0.1:8780", help="where the dashboard is served")
        u.set_defaults(run=cmd_user)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The new password, and whether it was made here (then it is printed once)."""
    if args.password_env:
        password = os.environ.get(args.password_env, "")
        if not password:
            raise CliError(f"{args.password_env} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            raise CliError("the two passwords differ")
    else:
        return secrets.token_urlsafe(15), True
    problem = password_problem(password)
    if problem:
        raise CliError(problem)
    return password, False


def cmd_user(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "add":
            password, made = _password(args)
            [user] = _dicts(conn, CREATE_USER, {"tenant_id": tenant, "email": args.email, "role": args.role,
                                                "password_hash": hash_password(password)})
            Console(stderr=True).print(f"user {user['user_id']} {user['email']} ({user['role']}) created in tenant "
                                       f"{tenant}; log in at /dashboard/login"
                                       + ("; the password, shown once:" if made else ""), highlight=False)
            if made:
                print(password)
        elif args.action == "invite":
            token = new_token()
            [inv] = _dicts(conn, INVITE_USER, {"tenant_id": tenant, "email": args.email, "role": args.role,
                                               "token_hash": token_hash(token)})
            Console(stderr=True).print(f"invitation for {inv['email']} ({inv['role']}), single use, until "
                                       f"{when(inv['expires_at'])}; the link, shown once:", highlight=False)
            print(f"{args.base_url.rstrip('/')}/dashboard/invitations/{token}")
        else:
            table = Table("id", "e-mail", "role", "last login", "state", title=f"dashboard users of tenant {tenant}")
            for u in _dicts(conn, USERS, {"tenant_id": tenant}):
                state = "disabled" if u["disabled_at"] else "locked" if u["locked_until"] else "active"
                table.add_row(str(u["user_id"]), u["email"], u["role"],
                              when(u["last_login_at"]) if u["last_login_at"] else "", state)
            console.print(table)
    return 0
