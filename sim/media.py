"""Media: uploads, Meta's two-step download, inbound media, and the "fetch" of media links.

Graph routes (sim/app.py), after Meta's media reference (reference §1.4)::

    POST   /{version}/{phone_number_id}/media   multipart: file, type (MIME),
                                                messaging_product=whatsapp -> {"id"}
    GET    /{version}/{media_id}[?phone_number_id=]  {"messaging_product", "url",
                                                "mime_type", "sha256" (hex), "file_size", "id"}
    GET    <url>                                the bytes, with the same Bearer token
    DELETE /{version}/{media_id}                {"success": true}

An upload needs the number's token (like a send); the other calls a token of the WABA
that owns the media (any token declared with a number of that WABA), else Graph's
"object does not exist" (100, subcode 33). Time runs on the simulator's clock: uploaded
ids expire after 30 days, ids of inbound media after 7 days, and a download URL after
5 minutes (then its GET is 404; ask ``GET /{media_id}`` again for a new one). Each
``GET /{media_id}`` issues a new URL ``/whatsapp_business/attachments/?mid=&ext=&hash=``
on the simulator's own host (Meta's lookaside host has the same path).

Upload checks (per type, Meta's supported-media table): MIME in ``LIMITS`` else 100 with
Meta's "Param file must be a file with one of the following types" message; size over
the type's limit: 131053 naming the limit. ``file_size`` is answered as an integer
(some copies of Meta's docs show a string [unsure]); ``sha256`` is the hex digest of the
bytes here and base64 of the same digest in inbound webhooks, as Meta sends them.

Sends naming media (a template's media header or an image / video / audio / document /
sticker message):

* ``{"id": ...}``: the id must exist, not be expired, belong to the sender's WABA and be
  of a MIME the kind accepts, else the send is refused at once with 131053 (Meta does not
  document whether this is synchronous [unsure]);
* ``{"link": ...}``: accepted (an http(s) URL, else 131009); the simulator never
  downloads it, it "fetches" by rule: a link whose host is in ``media.unreachable_hosts``
  (a name or a ``.suffix``; default ``.invalid`` and ``unreachable.example``) or whose
  URL contains one of ``media.bad_link_markers`` (default ``/broken``) fails later with a
  failed status 131053, as Meta's fetcher reports it ("Downloading media from weblink
  failed with http code 404, status message Not Found"). Both lists are settings
  (``POST /_sim/faults {"media": {...}}``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import SimError

MB = 1024 * 1024
UPLOAD_TTL_S = 30 * 86400.0
INBOUND_TTL_S = 7 * 86400.0
URL_TTL_S = 300.0
MAX_UPLOAD = 100 * MB
MAX_INBOUND = 120 * MB       # beyond Meta's 100 MB, so a client can test its own limit

DOCUMENT_TYPES = (
    "text/plain", "application/pdf", "application/vnd.ms-powerpoint", "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
)
# kind -> (largest file in bytes, accepted MIME types); the sticker limit is the animated
# one (static stickers: 100 KB).
LIMITS: dict[str, tuple[int, tuple[str, ...]]] = {
    "audio": (16 * MB, ("audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg",
                        "audio/opus")),
    "document": (100 * MB, DOCUMENT_TYPES),
    "image": (5 * MB, ("image/jpeg", "image/png")),
    "sticker": (500 * 1024, ("image/webp",)),
    "video": (16 * MB, ("video/mp4", "video/3gpp")),
}
KIND_OF_MIME = {m: kind for kind, (_, mimes) in LIMITS.items() for m in mimes}
ALL_TYPES = ", ".join(m for _, (_, mimes) in LIMITS.items() for m in mimes)
MEDIA_KINDS = tuple(LIMITS)

# What an inbound message of each kind carries by default (Meta's webhook fields).
INBOUND_DEFAULTS = {
    "image": "image/jpeg", "audio": "audio/ogg; codecs=opus", "video": "video/mp4",
    "document": "application/pdf", "sticker": "image/webp",
}
MAGIC = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/png": b"\x89PNG\r\n\x1a\n",
    "image/webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ", "application/pdf": b"%PDF-1.4\n",
    "audio/ogg": b"OggS\x00\x02", "video/mp4": b"\x00\x00\x00\x18ftypmp42",
}

_ids = itertools.count(1)
_ID_BASE = 10**15 + int.from_bytes(os.urandom(3), "big") * 10**6


def base_mime(mime: str) -> str:
    """``audio/ogg; codecs=opus`` -> ``audio/ogg``."""
    return mime.split(";", 1)[0].strip().lower()


@dataclass(slots=True)
class Media:
    id: str
    waba_id: str
    phone_number_id: str
    mime_type: str
    data: bytes
    sha256: str            # hex digest
    expires: float         # sim unix time
    filename: str | None = None

    def info(self, url: str) -> dict:
        return {"messaging_product": "whatsapp", "url": url, "mime_type": self.mime_type,
                "sha256": self.sha256, "file_size": len(self.data), "id": self.id}

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def sample_bytes(mime: str, size: int) -> bytes:
    """``size`` bytes that start like a file of that MIME type."""
    head = MAGIC.get(base_mime(mime), b"")
    return (head + os.urandom(max(0, size - len(head))))[:size]


class MediaStore:
    """Media by id, and the download URLs issued for them."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.items: dict[str, Media] = {}
        self.urls: dict[str, tuple[str, float]] = {}     # hash -> (media id, expires)

    def add(self, waba_id: str, phone_number_id: str, mime_type: str, data: bytes, *,
            ttl_s: float, filename: str | None = None) -> Media:
        media_id = str(_ID_BASE + next(_ids))
        media = Media(media_id, waba_id, phone_number_id, mime_type, data,
                      hashlib.sha256(data).hexdigest(), self.clock.time() + ttl_s, filename)
        self.items[media_id] = media
        return media

    def get(self, media_id: str) -> Media | None:
        """The media, unless unknown or expired (an expired one is forgotten)."""
        media = self.items.get(media_id)
        if media is not None and self.clock.time() >= media.expires:
            del self.items[media_id]
            return None
        return media

    def delete(self, media_id: str) -> None:
        self.items.pop(media_id, None)

    def issue_url(self, media: Media, base: str) -> str:
        expires = self.clock.time() + URL_TTL_S
        if len(self.urls) > 100_000:        # forget the URLs that expired
            now = self.clock.time()
            self.urls = {h: v for h, v in self.urls.items() if v[1] > now}
        token = secrets.token_urlsafe(18)
        self.urls[token] = (media.id, expires)
        return (f"{base}/whatsapp_business/attachments/?mid={media.id}&ext={int(expires)}"
                f"&hash={token}")

    def by_url(self, mid: str | None, token: str | None) -> Media | None:
        """The media a download URL names, while the URL and the media are valid."""
        entry = self.urls.get(token or "")
        if entry is None or entry[0] != mid or self.clock.time() >= entry[1]:
            return None
        return self.get(entry[0])

    # --- uploads ---------------------------------------------------------------------

    @staticmethod
    def check_upload(mime: str | None, size: int) -> str:
        """The kind of an upload of this MIME type and size, or Meta's error."""
        kind = KIND_OF_MIME.get(base_mime(mime or ""))
        if kind is None:
            msg = (f"(#100) Param file must be a file with one of the following types: "
                   f"{ALL_TYPES}. Received file of type '{mime or ''}'.")
            raise SimError(100, msg, message=msg)
        limit = LIMITS[kind][0]
        if size > limit:
            raise SimError(131053, f"The {kind} is {size} bytes; {base_mime(mime or '')} files "
                           f"may be at most {_human(limit)}.")
        if size == 0:
            raise SimError(131053, "The uploaded file is empty.")
        return kind

    # --- sends that name media ---------------------------------------------------------

    def check_ref(self, waba_id: str, kind: str, obj: dict, settings: dict) -> SimError | None:
        """Check media a send names: a refusal is raised now (an unknown id, a link that
        is no URL); a link the fetcher will fail on is returned (a failed status later)."""
        media_id = obj.get("id")
        if media_id:
            media = self.get(str(media_id))
            if media is None or media.waba_id != waba_id:
                raise SimError(131053, f"Media id {media_id} does not exist or has expired "
                               "(uploaded media lives 30 days): upload the file again.")
            accepted = LIMITS.get(kind, (0, ()))[1]
            if base_mime(media.mime_type) not in accepted:
                raise SimError(131053, f"Media id {media_id} is {media.mime_type}; "
                               f"a {kind} must be one of {', '.join(accepted)}.")
            return None
        link = obj.get("link")
        if not isinstance(link, str) or not link.startswith(("http://", "https://")):
            raise SimError(131009, f"{kind}.link must be an http or https URL.")
        host = (urlsplit(link).hostname or "").lower()
        conf = settings["media"]
        for bad in conf["unreachable_hosts"]:
            bad = str(bad).lower()
            if host == bad or (bad.startswith(".") and host.endswith(bad)):
                return SimError(131053, f"Downloading media from weblink failed: could not "
                                f"connect to host {host}")
        for marker in conf["bad_link_markers"]:
            if marker and str(marker) in link:
                return SimError(131053, "Downloading media from weblink failed with http code "
                                "404, status message Not Found")
        return None


def _human(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // 1024} KB"
