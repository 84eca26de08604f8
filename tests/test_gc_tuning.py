"""The controller's memory tuning: a large buffer freed does not send the next ones into the heap."""

from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter: the tuning is process-wide. mallinfo2 (glibc >= 2.33) tells how many bytes
# are held in mappings of their own (`hblkhd`).
PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from drainctl import gc_tuning
    assert gc_tuning.large_buffers_unmapped_when_freed()
big = bytearray(4 << 20)
del big  # glibc now serves anything up to 4 MiB from the heap, unless its threshold is held
before = libc.mallinfo2().hblkhd
response = bytearray(600_000)  # about one /status at 1,000 workers
print(libc.mallinfo2().hblkhd - before)
"""


def mapped_bytes_of_a_response(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout)


def test_a_response_sized_buffer_gets_a_mapping_of_its_own_after_a_larger_one_was_freed() -> None:
    assert mapped_bytes_of_a_response("default") == 0  # what the tuning is for: glibc's own policy
    assert mapped_bytes_of_a_response("tuned") >= 600_000
