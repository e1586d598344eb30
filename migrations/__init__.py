"""The warehouse's Alembic history. The wheel installs it as the `clickstream_migrations`
package (see pyproject.toml), so a DBA migrates from the same wheel that carries the loader,
with `clickstream-migrate`.

Nothing under `loader/` imports this package: the Lambda never needs Alembic.
"""
