"""Twilio Programmable Messaging (SMS, and WhatsApp through Twilio): inbound messages by
webhook, replies by the Messages resource.

Twilio signs each request: ``X-Twilio-Signature`` is the base64 HMAC-SHA1, under the
account's auth token, of the full URL it called followed by every form parameter, sorted,
as name and value. A JSON body is covered by the URL's ``bodySHA256`` parameter instead.
Behind a proxy the URL the API sees is not the one Twilio called: the endpoint's
``public_url`` names it. Each message carries ``MessageSid``, the same on every retry.
Status callbacks are acknowledged and dropped; the webhook is answered with empty TwiML
(the reply is sent later, through the API).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from shared.channels.platform import (
    Answer,
    Call,
    ChannelName,
    Credentials,
    Incoming,
    Message,
    NoHandshake,
    Parsed,
    Refused,
    Result,
    Route,
    by_status,
    json_or_empty,
)

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
DEFAULT_PORTS = {"https": 443, "http": 80}


class Twilio(NoHandshake):
    name: ChannelName = "twilio"
    required: tuple[str, ...] = ("account_sid", "auth_token")
    generated: tuple[str, ...] = ()
    public: tuple[str, ...] = ("account_sid",)
    max_chars: int = 1600  # the Messages resource's limit on Body
    chat_interval_s: float = 1.0  # a long-code number sends about one message a second
    per_second: int = 30
    api_base: str = "https://api.twilio.com"

    def verify(self, endpoint: Credentials, request: Incoming, now_s: float) -> None:
        given = request.headers.get("x-twilio-signature", "")
        url = _signed_url(endpoint.public_url, request.url)
        query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        if "bodySHA256" in query:
            digest = hashlib.sha256(request.body).hexdigest()
            if not hmac.compare_digest(digest, query["bodySHA256"]):
                raise Refused("bodySHA256 does not match the body")
            params: list[tuple[str, str]] = []
        else:
            params = form(request.body)
        token = endpoint.credentials["auth_token"]
        for candidate in _spellings(url):
            if hmac.compare_digest(given.encode(), signature(token, candidate, params).encode()):
                return
        raise Refused("X-Twilio-Signature is missing or does not match")

    def parse(self, endpoint: Credentials, request: Incoming) -> Parsed:
        params = dict(form(request.body))
        answer = Answer(EMPTY_TWIML, "text/xml")
        sid = params.get("MessageSid") or params.get("SmsSid")
        if "MessageStatus" in params or not sid or "From" not in params:
            return Parsed(answer=answer)  # a status callback
        if params.get("AccountSid") != endpoint.credentials["account_sid"]:
            raise Refused("the message is for another Twilio account", 403)
        media = params.get("NumMedia", "0") not in ("", "0")  # a picture the bot cannot see
        body = "" if media else params.get("Body", "")
        message = Message(chat=params["From"], id=sid, text=body or None, via=params.get("To"))
        return Parsed((message,), answer)

    def call(self, endpoint: Credentials, route: Route, text: str) -> Call:
        base = (endpoint.api_base or self.api_base).rstrip("/")
        sid, token = endpoint.credentials["account_sid"], endpoint.credentials["auth_token"]
        basic = base64.b64encode(f"{sid}:{token}".encode()).decode()
        return Call(
            f"{base}/2010-04-01/Accounts/{sid}/Messages.json",
            {"authorization": f"Basic {basic}"},
            form={"To": route.chat, "From": route.via or "", "Body": text},
        )

    def result(self, status: int, headers: Mapping[str, str], body: bytes) -> Result:
        if 200 <= status < 300:
            return Result(True)
        return by_status(status, headers, str(json_or_empty(body).get("message") or "")[:300])


def form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return []


def signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's request signature: the URL, then each distinct parameter's name and
    value, sorted (as Twilio's own validator computes it)."""
    data = url + "".join(name + value for name, value in sorted(set(params)))
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _signed_url(public_url: str | None, called: str) -> str:
    """The URL Twilio signed: the endpoint's ``public_url`` (the one configured at Twilio,
    when a proxy changes the one chatlane sees), with the query Twilio added to it
    (``bodySHA256``) if it names none of its own."""
    if public_url is None:
        return called
    query = urlsplit(called).query
    if query and not urlsplit(public_url).query:
        return f"{public_url}?{query}"
    return public_url


def _spellings(url: str) -> list[str]:
    """The URL as given, with its default port written out, and without it: Twilio signs
    whichever it used, and proxies add or drop the port."""
    parts = urlsplit(url)
    port = DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    bare = urlunsplit(parts._replace(netloc=host if parts.port in (None, port) else parts.netloc))
    spellings = [url, bare]
    if port is not None and parts.port in (None, port):
        spellings.append(urlunsplit(parts._replace(netloc=f"{host}:{port}")))
    return list(dict.fromkeys(spellings))
