"""`samx init` and `samx users`: the installation and its accounts."""
from __future__ import annotations


import click

from backend.config import Settings
from backend.cli.app import main, open_db, pass_settings, safe_url


@main.command()
@click.option("--admin-user", default="admin", show_default=True)
@click.option("--admin-password", envvar="SAMX_ADMIN_PASSWORD", help="Default: generated and printed once.")
@pass_settings
def init(settings: Settings, admin_user: str, admin_password: str | None) -> None:
    """Create the data directory, database schema, vocabulary and first admin account."""
    from backend.database.users import first_admin, initial_password_file

    db = open_db(settings)
    made = first_admin(settings, db, admin_user, admin_password)
    click.echo(f"data directory: {settings.data_dir}")
    click.echo(f"database:       {safe_url(settings.database_url)}")
    click.echo(f"job queue:      {settings.queue_url if settings.queue_url != 'sqlite' else settings.queue_file}")
    if made:
        click.echo(f"admin account:  {made[0]} / {made[1]}  (also in {initial_password_file(settings)})")


@main.group()
def users() -> None:
    """Manage accounts (roles: admin, radiologist, viewer)."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "radiologist", "viewer"]), default="radiologist", show_default=True)
@click.password_option()
@pass_settings
def users_add(settings: Settings, username: str, role: str, password: str) -> None:
    from backend.database.users import create_user

    try:
        create_user(open_db(settings), username, password, role)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"user {username} ({role}) created")
