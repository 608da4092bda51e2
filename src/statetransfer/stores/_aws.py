"""Where AWS credentials can come from in the environment (no obstore needed to ask)."""

from __future__ import annotations

import os

__all__ = ["CREDENTIAL_GROUPS", "credentials_in_environment"]

#: Environment variables that, all set within one group, give an S3 client credentials to sign with.
CREDENTIAL_GROUPS = (
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("AWS_PROFILE",),
    ("AWS_WEB_IDENTITY_TOKEN_FILE",),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",),
    ("AWS_CONTAINER_CREDENTIALS_FULL_URI",),
)


def credentials_in_environment() -> bool:
    """Whether one of :data:`CREDENTIAL_GROUPS` is fully set."""
    return any(all(os.environ.get(name) for name in group) for group in CREDENTIAL_GROUPS)
