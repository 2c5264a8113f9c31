"""
Secrets, read when the services start rather than while parsing, since they
touch files: the Redis password (:func:`secret_password`), the shared-cache
signing key (:func:`signing_key`) and the API bearer token
(:func:`api_token`).  A secret that cannot be read raises
:class:`ConfigError` naming its setting.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from dnsgo.config.errors import ConfigError, Problem
from dnsgo.config.schema import MIN_SIGNING_KEY, ApiConfig, SharedCacheConfig


def _read_secret(path: str, setting: str, source: str) -> str:
    """Read a secret file without its trailing newline; ConfigError if that fails."""
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([Problem(setting, f"cannot read {path}: {reason}")], source) from None
    if not value:
        raise ConfigError([Problem(setting, f"{path} is empty")], source)
    return value


def secret_password(shared: SharedCacheConfig, source: str = "<config>") -> str:
    """
    Return the Redis password: ``password`` if set, else the contents of
    ``password_secret.file``, else of ``{directory}/{name}/{key}`` (a
    Kubernetes secret mounted as a directory), else ''.  Raises ConfigError
    naming the setting when the file cannot be read or is empty.
    """
    if shared.password:
        return shared.password
    secret = shared.password_secret
    if secret.file:
        return _read_secret(secret.file, "cache.shared_cache.password_secret.file", source)
    if secret.name and secret.key:
        path = os.path.join(secret.directory, secret.name, secret.key)
        return _read_secret(path, "cache.shared_cache.password_secret", source)
    return ""


def signing_key(shared: SharedCacheConfig, source: str = "<config>") -> bytes:
    """
    Return the shared-cache signing key as UTF-8 bytes: ``signing_key`` if
    set, else the contents of ``signing_key_file``, else ``b''`` (no
    signing).  Raises ConfigError naming the setting when the file cannot
    be read, is empty, or holds a key shorter than MIN_SIGNING_KEY.
    """
    if shared.signing_key:
        return shared.signing_key.encode("utf-8")
    if not shared.signing_key_file:
        return b""
    setting = "cache.shared_cache.signing_key_file"
    key = _read_secret(shared.signing_key_file, setting, source)
    if len(key) < MIN_SIGNING_KEY:
        raise ConfigError([Problem(setting, f"the key in {shared.signing_key_file} is shorter than "
                                            f"{MIN_SIGNING_KEY} characters")], source)
    return key.encode("utf-8")


def api_token(api: ApiConfig, environ: Mapping[str, str] | None = None, source: str = "<config>") -> str:
    """
    Return the API bearer token: ``auth_token``, else the stripped contents of
    ``auth_token_file``, else ``$DNSGO_API_TOKEN``, else '' (no token).
    Raises ConfigError when the token file cannot be read or is empty.
    """
    if api.auth_token:
        return api.auth_token
    if api.auth_token_file:
        return _read_secret(api.auth_token_file, "api.auth_token_file", source).strip()
    if environ is None:
        environ = os.environ
    return environ.get("DNSGO_API_TOKEN", "")
