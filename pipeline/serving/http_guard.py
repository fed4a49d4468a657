"""A request-size guard in front of Triton's HTTP port.

Triton 2.51 (the nvidia-pytriton wheel) has no request-size option (`--http-max-input-size` came in
later releases), and a hostile run on a 2-core AMD EPYC killed it with one 16 MB JSON body (SIGSEGV; on
an Intel Xeon the same bodies were answered). The guard listens on the public HTTP port, reads each
request's head, and refuses a body over the limit with `413` and a JSON error: a declared length
before a byte of the body reaches the server, a chunked body as soon as its running size passes the
limit (the server sees a request cut short and drops it). Everything else passes through unchanged,
keep-alive and `Expect: 100-continue` included (responses are relayed as raw bytes). Clients wait for
a response before the next request on a connection, so a refusal never overtakes an answer in flight.
"""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Optional

MAX_HEAD_BYTES = 64 * 1024  # request line + headers


class RequestTooLarge(Exception):
    pass


def _refusal(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def _headers(head: bytes) -> dict:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}


async def _forward_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> None:
    while length > 0:
        data = await reader.readexactly(min(length, 1 << 16))
        writer.write(data)
        await writer.drain()
        length -= len(data)


async def _forward_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
    """Forward a chunked body as it comes, counting its decoded size: over ``limit``, RequestTooLarge
    (the server then sees a request cut short, which it drops)."""
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        length = int(line.split(b";")[0].strip() or b"0", 16)
        if length < 0:
            raise ValueError(length)
        size += length
        if size > limit:
            raise RequestTooLarge(size)
        writer.write(line)
        if length == 0:  # the last chunk, then optional trailers up to an empty line
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            await writer.drain()
            return
        await _forward_exactly(reader, writer, length + 2)


async def _discard(reader: asyncio.StreamReader, budget: int, seconds: float) -> None:
    """Read what the client is still sending (a body it sends before reading any answer), so it reaches
    the refusal instead of a reset connection; bounded in bytes and time."""
    try:
        async with asyncio.timeout(seconds):
            while budget > 0 and (data := await reader.read(1 << 16)):
                budget -= len(data)
    except (TimeoutError, ConnectionError):
        pass


class HttpBodyGuard:
    """``with HttpBodyGuard(public_port, upstream_port, max_body_bytes):`` serves the guard on
    127.0.0.1:``public_port`` for the block, from a thread of its own."""

    def __init__(self, public_port: int, upstream_port: int, max_body_bytes: int):
        self.public_port, self.upstream_port, self.max_body_bytes = public_port, upstream_port, max_body_bytes
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "HttpBodyGuard":
        started, failure = threading.Event(), []

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._connection, "127.0.0.1", self.public_port, limit=MAX_HEAD_BYTES, reuse_address=True))
            except OSError as exc:
                failure.append(exc)
                self._loop.close()
                return
            finally:
                started.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=serve, name="http-body-guard", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        """No new connections; the open ones end (their sockets closed) before the loop stops."""
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.write(_refusal("502 Bad Gateway", "the server is not accepting connections (starting or stopped)"))
            await _close(client_writer)
            return
        relay = asyncio.ensure_future(_pipe(upstream_reader, client_writer))
        try:
            while True:
                try:
                    head = await client_reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    client_writer.write(_refusal("431 Request Header Fields Too Large", f"request headers over {MAX_HEAD_BYTES} bytes"))
                    break
                except asyncio.IncompleteReadError:
                    break  # the client closed the connection
                headers = _headers(head)
                chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                try:
                    length = 0 if chunked else int(headers.get("content-length", "0") or 0)
                    if length < 0:
                        raise ValueError(length)
                    if length > self.max_body_bytes:
                        raise RequestTooLarge(length)
                    # The head goes first: a client that asked `Expect: 100-continue` waits for the server's answer.
                    upstream_writer.write(head)
                    if chunked:
                        await _forward_chunked(client_reader, upstream_writer, self.max_body_bytes)
                    else:
                        await _forward_exactly(client_reader, upstream_writer, length)
                except RequestTooLarge as exc:
                    relay.cancel()
                    client_writer.write(_refusal("413 Payload Too Large", (
                        f"request body of {exc.args[0]} bytes or more is over this server's limit of {self.max_body_bytes} bytes "
                        f"(serving.http_max_request_mb); send large batches over gRPC or as binary tensors")))
                    await client_writer.drain()
                    client_writer.write_eof()
                    await _discard(client_reader, budget=1 << 30, seconds=30.0)
                    break
                except (ValueError, asyncio.LimitOverrunError):
                    client_writer.write(_refusal("400 Bad Request", "unreadable Content-Length or chunked body"))
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the guard is shutting down: the sockets close below (a cancelled handler would be logged as an error)
        finally:
            relay.cancel()
            await _close(upstream_writer)
            await _close(client_writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server's responses to the client, byte for byte; the client's connection ends with the server's
    (cancelled, it leaves the client's connection to the caller)."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, RuntimeError):
        pass
