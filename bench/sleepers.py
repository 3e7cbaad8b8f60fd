"""N threads that sleep until stdin closes: load for a livepatch transition.

    python3 bench/sleepers.py 5000

Prints "ready N" once every thread is blocked (on one Event), then waits for
stdin to reach EOF, wakes them and exits. Each is a task the transition must
check and switch.
"""

from __future__ import annotations

import sys
import threading


def main() -> int:
    n = int(sys.argv[1])
    threading.stack_size(256 * 1024)  # 5,000 default 8 MiB stacks would be 40 GiB of address space
    done = threading.Event()
    threads = [threading.Thread(target=done.wait, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    print(f"ready {n}", flush=True)
    sys.stdin.read()
    done.set()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
