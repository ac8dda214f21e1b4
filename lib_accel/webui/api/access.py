"""Who may call Accel's ``/accel/v1`` routes, and what a state-changing request must carry.

Three rules, each matching what the WebUI v1.10.1 does for its own routes:

* ``GET stats`` is open, like ``/internal/progress`` (which the WebUI's pages poll without credentials even
  under ``--gradio-auth``): the live badge must keep working whatever the login setup.
* The other routes need, when the WebUI has authentication, HTTP Basic with an ``--api-auth`` user (compared
  as ``modules/api/api.py`` does, in constant time) or the login cookie of a ``--gradio-auth`` session
  (gradio 3.41: ``access-token`` or ``access-token-unsecure``, looked up in ``app.tokens``). Without either
  flag they are open, like ``/sdapi/v1/*``.
* Every POST also needs ``Content-Type: application/json`` and ``X-Accel-Request: 1``. A web page on another
  site cannot send either without a CORS preflight, which the WebUI answers only for origins the user allowed
  with ``--cors-allow-origins``; so a cross-site form or ``fetch`` cannot clear caches or queue compiles, even
  when the WebUI runs without authentication (the default) or the browser holds cached Basic credentials.

Fail closed: an ``--api-auth`` value the WebUI itself could not parse (an entry without ``:``, such as
``admin``) refuses the guarded routes with the reason instead of leaving them open.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable
from typing import Any

REQUEST_HEADER = "X-Accel-Request"
MAX_BODY_BYTES = 64 * 1024  # the largest body any route needs ({"sizes": "..."}) is a few hundred bytes
MAX_DEPTH = 32  # nesting of a body's arrays/objects; every route's body is one flat object
REFUSED = "Incorrect username or password"


def parse_api_auth(value: str | None) -> dict[str, str]:
    """``"u1:p1,u2:p2"`` (the ``--api-auth`` format) -> ``{"u1": "p1", "u2": "p2"}``; ``{}`` when unset.

    Raises ValueError for an entry without ``:`` (the WebUI's own parser crashes on it); the message never
    repeats the entry, which may be a password."""
    if not value:
        return {}
    creds = {}
    for number, item in enumerate(value.split(","), 1):
        user, sep, password = item.partition(":")
        if not sep:
            raise ValueError(f"--api-auth entry {number} is not USER:PASSWORD")
        creds[user] = password
    return creds


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic ...`` header, None when absent or malformed."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


def check_access(headers: Any, cookies: Any, credentials: Callable[[], dict[str, str]], app: Any) -> tuple[bool, str]:
    """Whether a request to a guarded route may proceed, and why. ``credentials`` returns the ``--api-auth``
    users (raising ValueError when the flag is malformed); ``app`` is the server app (gradio's ``App`` carries
    ``auth`` and ``tokens`` under ``--gradio-auth``)."""
    try:
        creds = credentials()
    except ValueError as e:
        return False, f"{e}: Accel's routes stay closed until --api-auth is fixed"
    gradio_auth = getattr(app, "auth", None)
    if not creds and not gradio_auth:
        return True, "no authentication configured"
    basic = basic_credentials(headers.get("authorization"))
    if creds and basic is not None and basic[0] in creds \
            and secrets.compare_digest(basic[1].encode(), creds[basic[0]].encode()):
        return True, "api-auth"
    if gradio_auth:
        token = cookies.get("access-token") or cookies.get("access-token-unsecure")
        if token and (getattr(app, "tokens", None) or {}).get(token) is not None:
            return True, "gradio login"
    return False, REFUSED


def post_refusal(headers: Any) -> str:
    """"" when a POST carries what a cross-site page cannot send without a preflight, else what is missing."""
    json_type = headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
    if json_type and headers.get(REQUEST_HEADER, "").strip() == "1":
        return ""
    return f"send Content-Type: application/json and {REQUEST_HEADER}: 1 with this request"


class BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_json_object(request: Any, limit: int = MAX_BODY_BYTES) -> dict:
    """The request body as a JSON object (:func:`parse_json_object`). BodyError(413) past ``limit`` bytes (read
    no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


def parse_json_object(raw: bytes) -> dict:
    """``raw`` as a JSON object (``{}`` when blank); BodyError(400) saying why for anything else: not JSON (with
    the position), not an object, or nested deeper than :data:`MAX_DEPTH`. The depth is checked before parsing,
    so it does not depend on Python's recursion limit (which torch's inductor raises)."""
    if not raw.strip():
        return {}
    if nesting_depth(raw) > MAX_DEPTH:
        raise BodyError(400, f"the body is nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        body = json.loads(raw)
    except RecursionError:  # cannot happen below MAX_DEPTH; kept so that a deep body is never a 500
        raise BodyError(400, "the body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are no Unicode text
        where = f" ({e.msg} at line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise BodyError(400, f"the body is not JSON{where}") from None
    if not isinstance(body, dict):
        raise BodyError(400, "the body must be a JSON object")
    return body


_SPECIAL = re.compile(rb'[\\"\[\]{}]')  # backslash, quote, brackets: all the scan needs to look at


def nesting_depth(raw: bytes, stop: int = MAX_DEPTH) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (brackets inside strings not counted), or the first depth
    past ``stop``. One pass over the special characters, linear in the body whatever it holds."""
    depth = deepest = 0
    in_string, skip = False, -1
    for match in _SPECIAL.finditer(raw):
        at = match.start()
        if at == skip:  # the character after a backslash in a string
            continue
        char = raw[at]
        if in_string:
            if char == 0x5C:
                skip = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif char in (0x5D, 0x7D):
            depth = max(depth - 1, 0)
    return deepest
