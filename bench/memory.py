"""Memory per idle connection: RSS of a server process holding 1,000 idle clients.

    .venv/bin/python bench/memory.py --clients 1000 --runs 3

The server runs in its own process (127.0.0.1, ephemeral port); this process opens the
clients (websockets, compression negotiated when the server offers it), waits until
the server has welcomed all of them, and reads the server's RSS (/proc via psutil)
before and after. Reference, in the same run: a bare ``websockets`` server whose
handler only waits for the connection to close, with the same compression setting.
Reported: KiB per connection (median of ``--runs``), compression off and on.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys

import psutil
from websockets.asyncio.client import connect

EVKIT = """
import sys, evkit
srv = evkit.serve(port=0, compression=sys.argv[1] == "on", ping_interval=None,
                  max_connections_per_ip=100_000, connections_per_second_per_ip=100_000.0)
print(srv.port, flush=True)
sys.stdin.read()
"""

REFERENCE = """
import asyncio, sys
from websockets.asyncio.server import serve

async def handler(ws):
    await ws.send('{"type":"websocket.connected"}')
    await ws.wait_closed()

async def main():
    async with serve(handler, "127.0.0.1", 0, compression="deflate" if sys.argv[1] == "on" else None,
                     ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def measure(script: str, compression: str, clients: int) -> float:
    server = subprocess.Popen(
        [sys.executable, "-c", script, compression],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        process = psutil.Process(server.pid)

        async def run() -> float:
            url = f"ws://127.0.0.1:{port}/ws/events"
            warm = [await connect(url, ping_interval=None) for _ in range(20)]
            for ws in warm:
                await ws.recv()
            before = process.memory_info().rss
            connections = []
            for start in range(0, clients, 100):
                batch = await asyncio.gather(
                    *(
                        connect(url, ping_interval=None)
                        for _ in range(start, min(clients, start + 100))
                    )
                )
                await asyncio.gather(*(ws.recv() for ws in batch))  # welcomed: fully set up
                connections.extend(batch)
            after = process.memory_info().rss
            await asyncio.gather(*(ws.close() for ws in connections + warm))
            return (after - before) / clients / 1024

        return asyncio.run(run())
    finally:
        server.kill()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.clients + 100)), hard))
    for compression in ("off", "on"):
        ours = statistics.median(
            measure(EVKIT, compression, args.clients) for _ in range(args.runs)
        )
        reference = statistics.median(
            measure(REFERENCE, compression, args.clients) for _ in range(args.runs)
        )
        print(
            f"compression {compression:<3}  evkit {ours:6.1f} KiB/connection   bare websockets "
            f"{reference:6.1f} KiB/connection   ratio {ours / reference:.2f}"
        )


if __name__ == "__main__":
    main()
