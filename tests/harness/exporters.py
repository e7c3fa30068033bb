"""Small /metrics endpoints on loopback that are not gpumon agents: dcgm-exporter's answer (its
real names, labels and units), hostile exporters, and the benchmark's many-target stand-ins.

``StaticExporter(address, port, text)`` answers every GET with ``text`` (``set_text`` changes
it) from a thread; ``close()`` stops it.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass

MIB = 2**20


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.text.encode("utf-8")  # type: ignore[attr-defined]
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class StaticExporter:
    def __init__(self, address: str, port: int, text: str) -> None:
        self.server = http.server.ThreadingHTTPServer((address, port), _Handler)
        self.server.daemon_threads = True
        self.server.text = text  # type: ignore[attr-defined]
        self.server.requests = 0  # type: ignore[attr-defined]
        self.address, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        return self.server.requests  # type: ignore[attr-defined]

    def set_text(self, text: str) -> None:
        self.server.text = text  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class DcgmGpu:
    index: int
    uuid: str
    util: int
    used_mib: int
    free_mib: int
    temp: int
    power: float
    model: str = "NVIDIA L4"


# dcgm-exporter 4.x, its default counters (etc/default-counters.csv): the fields gpumon reads
# and two it does not (they must be ignored).
_FIELDS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda g: 1410),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: g.temp),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: g.power),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda g: g.util),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", lambda g: g.free_mib),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda g: g.used_mib),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", lambda g: 0),
)


def dcgm_exposition(hostname: str, gpus: list[DcgmGpu], driver: str = "580.105.08") -> str:
    """What dcgm-exporter answers on :9400/metrics for these GPUs."""
    lines = []
    for name, kind, doc, value in _FIELDS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        for g in gpus:
            labels = (
                f'gpu="{g.index}",UUID="{g.uuid}",pci_bus_id="00000000:{0x31 + g.index:02X}:00.0",'
                f'device="nvidia{g.index}",modelName="{g.model}",Hostname="{hostname}",'
                f'DCGM_FI_DRIVER_VERSION="{driver}"'
            )
            lines.append(f"{name}{{{labels}}} {value(g)}")
    return "\n".join(lines) + "\n"
