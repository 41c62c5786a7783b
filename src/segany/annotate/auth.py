"""Who is asking: API tokens, browser sessions with CSRF protection, passwords and roles.

Secrets (API tokens, session cookies) are random, shown once and stored as sha256 hashes; passwords
as scrypt hashes. A cookie request that changes state must carry the session's CSRF token in
``X-CSRF-Token`` and an ``Origin`` (or ``Referer``) of this server. Bearer tokens need neither: a
browser never attaches them by itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update

from segany.annotate.db import ROLES, Database, Token, User, utcnow
from segany.annotate.errors import ApiError, bad_request
from segany.annotate.store import Principal

SESSION_COOKIE = "segany_session"
SESSION_DAYS = 14
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${key.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, key = stored.split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1, dklen=32)
    return hmac.compare_digest(got.hex(), key)


def parse_roles(roles: str) -> str:
    names = sorted({r.strip() for r in roles.split(",") if r.strip()})
    bad = [r for r in names if r not in ROLES]
    if not names or bad:
        raise bad_request(f"roles must be a comma-separated subset of {', '.join(ROLES)}")
    return ",".join(names)


def add_user(db: Database, name: str, roles: str, password: str | None = None) -> int:
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise bad_request("user names are 1-64 letters, digits, '.', '_' or '-'")
    with db.write() as s:
        if s.scalar(select(User).where(User.name == name)) is not None:
            raise ApiError(409, f"user {name} exists")
        user = User(name=name, roles=parse_roles(roles), password_hash=hash_password(password) if password else None)
        s.add(user)
        s.flush()
        return user.id


def new_token(db: Database, user_id: int, kind: str = "api", name: str | None = None,
              days: float | None = None) -> tuple[int, str, str | None]:
    """Create a token; returns (id, secret, csrf). Only the secret's hash is stored."""
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24) if kind == "session" else None
    expires = utcnow() + dt.timedelta(days=days) if days else None
    with db.write() as s:
        token = Token(user_id=user_id, kind=kind, secret_hash=digest(secret), csrf=csrf, name=name,
                      expires=expires, revoked=False)
        s.add(token)
        s.flush()
        return token.id, secret, csrf


def revoke_token(db: Database, token_id: int, user: Principal) -> None:
    with db.write() as s:
        token = s.get(Token, token_id)
        if token is None or (token.user_id != user.id and "admin" not in user.roles):
            raise ApiError(404, f"token {token_id} not found")
        token.revoked = True


def revoke_secret(db: Database, secret: str) -> None:
    with db.write() as s:
        s.execute(update(Token).where(Token.secret_hash == digest(secret)).values(revoked=True))


def _lookup(db: Database, secret: str, kind: str) -> tuple[Principal, Token] | None:
    with db.read() as s:
        token = s.scalar(select(Token).where(Token.secret_hash == digest(secret), Token.kind == kind))
        if token is None or token.revoked or (token.expires is not None and token.expires < utcnow()):
            return None
        user = s.get(User, token.user_id)
        if user is None:
            return None
        via = "cookie" if kind == "session" else "token"
        return Principal(user.id, user.name, tuple(user.role_list()), via), token


def login(db: Database, name: str, password: str) -> tuple[str, str]:
    """Check a password; returns (session secret, csrf)."""
    with db.read() as s:
        user = s.scalar(select(User).where(User.name == name))
    stored = user.password_hash if user else None
    if not check_password(password, stored) or user is None:
        raise ApiError(401, "wrong user name or password")
    _, secret, csrf = new_token(db, user.id, "session", days=SESSION_DAYS)
    assert csrf is not None
    return secret, csrf


def _origin_of(headers: Any) -> str | None:
    origin = headers.get("origin")
    if origin:
        return origin
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}"
    return None


def same_origin(headers: Any, scheme: str, allowed: tuple[str, ...] = ()) -> bool:
    origin = _origin_of(headers)
    host = headers.get("host", "")
    return origin is not None and (origin == f"{scheme}://{host}" or origin in allowed)


def authenticate(
    db: Database,
    method: str,
    headers: Any,
    cookies: dict[str, str],
    scheme: str,
    auth_on: bool,
    local: Principal,
    allowed_origins: tuple[str, ...] = (),
) -> tuple[Principal, str | None]:
    """The caller and the CSRF token of its session (None for tokens and the local user)."""
    unsafe = method.upper() not in SAFE_METHODS
    origin = headers.get("origin")
    if unsafe and origin and not same_origin(headers, scheme, allowed_origins):
        raise ApiError(403, "cross-origin request refused")
    if not auth_on:
        return local, None
    header = headers.get("authorization")
    if header:
        kind, _, secret = header.partition(" ")
        if kind.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "Authorization must be 'Bearer <token>'")
        found = _lookup(db, secret.strip(), "api")
        if found is None:
            raise ApiError(401, "invalid, expired or revoked token")
        return found[0], None
    cookie = cookies.get(SESSION_COOKIE)
    if not cookie:
        raise ApiError(401, "not logged in")
    found = _lookup(db, cookie, "session")
    if found is None:
        raise ApiError(401, "session expired; log in again")
    principal, token = found
    if unsafe:
        sent = headers.get("x-csrf-token") or ""
        if not token.csrf or not hmac.compare_digest(sent, token.csrf):
            raise ApiError(403, "missing or wrong X-CSRF-Token")
        if not same_origin(headers, scheme, allowed_origins):
            raise ApiError(403, "missing or foreign Origin")
    return principal, token.csrf
