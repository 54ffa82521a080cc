"""Fetching an image a request names by URL, when the operator allows it, without letting the
request reach what the server can reach and the caller cannot.

The host is resolved once, and every address it resolves to must be public (`is_global`: no
loopback, private, link-local such as the cloud metadata address 169.254.169.254, shared or
reserved ranges) or in a network the operator listed (`IMG2MUSIC_SERVER_IMAGE_URL_NETWORKS`).
The connection goes to the address that was checked (the URL's name still goes in `Host` and in
TLS's server name, so certificates are verified against it), so a name that resolves differently
a moment later (DNS rebinding) changes nothing. A redirect is followed only within the same
scheme, host and port, and each failure, whatever it was, gets the same one line: the answer
never tells a caller which addresses or ports exist behind the server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import httpx

from img2music.server.protocol import ApiError
from img2music.settings import Settings

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
UNUSABLE = ("cannot fetch the image URL: it must be an http(s) URL of a public host that answers "
            "with the image; or send the image as a base64 data URL")


class Refused(Exception):
    """Why one URL was not fetched; logged, never sent to the caller."""


def unusable_url() -> ApiError:
    """The one answer to every image URL that could not be used."""
    return ApiError(400, UNUSABLE, param="messages", code="invalid_image_url")


async def fetch_image(url: str, settings: Settings) -> bytes:
    """The bytes at `url`, at most `max_image_bytes` of them, or the one `unusable_url` error."""
    try:
        return await asyncio.wait_for(_fetch(httpx.URL(url), settings),
                                      timeout=FETCH_TIMEOUT_S * 2)
    except (Refused, httpx.HTTPError, httpx.InvalidURL, OSError, ValueError,
            TimeoutError) as error:
        logger.info("image URL not fetched: %s: %s", type(error).__name__, error)
        raise unusable_url() from None


async def _fetch(url: httpx.URL, settings: Settings) -> bytes:
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False,
                                 trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = await _checked_address(url, settings)
            request = client.build_request(
                "GET", url.copy_with(host=address), headers={"Host": url.netloc.decode("ascii")},
                extensions={"sni_hostname": url.host})
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    url = _same_origin(url, response.headers.get("location", ""))
                    continue
                response.raise_for_status()
                return await _read(response, settings.max_image_bytes)
            finally:
                await response.aclose()
    raise Refused(f"more than {MAX_REDIRECTS} redirects")


async def _checked_address(url: httpx.URL, settings: Settings) -> str:
    """The address to connect to, when every address the host resolves to may be reached."""
    if url.scheme not in ("http", "https") or not url.host:
        raise Refused(f"not an http(s) URL: {url.scheme}")
    if url.userinfo:
        raise Refused("the URL carries credentials")
    port = url.port or (443 if url.scheme == "https" else 80)
    found = await asyncio.get_running_loop().getaddrinfo(url.host, port,
                                                         type=socket.SOCK_STREAM)
    addresses = [ip_address(entry[4][0]) for entry in found]
    if not addresses:
        raise Refused(f"{url.host} does not resolve")
    for address in addresses:
        if not _reachable(address, settings):
            raise Refused(f"{url.host} resolves to {address}, which is not public")
    return str(addresses[0])


def _reachable(address: IPv4Address | IPv6Address, settings: Settings) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in settings.image_url_networks):
        return True
    return address.is_global and not address.is_multicast


def _same_origin(url: httpx.URL, location: str) -> httpx.URL:
    target = url.join(location)
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        raise Refused("a redirect to another host")
    return target


async def _read(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    async for piece in response.aiter_bytes():
        data.extend(piece)
        if len(data) > limit:
            raise Refused(f"over the {limit:,}-byte image limit")
    return bytes(data)
