#!/usr/bin/env python3
"""Flash and RAM use of the firmware, checked against limits (run by the Makefile after every build).

RAM at the deepest point = static data (.data + .bss + .noinit) + the deepest stack: the deepest call chain
from ``main`` plus the deepest interrupt handler on top of it (the handlers never re-enable interrupts, so
they do not nest). A function's frame is the larger of what the compiler reports (``-fstack-usage``) and the
registers it pushes, plus 2 bytes of return address per call (3 on parts above 128 KiB, not this one); library
routines from libgcc have no ``.su`` entry and are measured by their pushes. Recursion or an indirect call
would make the estimate meaningless, so either fails the check.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from functools import cache

RETURN_ADDRESS = 2


def sections(size_tool: str, elf: str) -> dict[str, int]:
    out = subprocess.run([size_tool, "-A", elf], check=True, capture_output=True, text=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


def disassembly(objdump: str, elf: str) -> dict[str, list[str]]:
    out = subprocess.run([objdump, "-d", elf], check=True, capture_output=True, text=True).stdout
    functions: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if head:
            current = functions.setdefault(head.group(1), [])
            continue
        if current is not None and line.strip():
            current.append(line)
    return functions


def stack_usage(su_path: str) -> dict[str, int]:
    usage: dict[str, int] = {}
    with open(su_path, encoding="utf-8") as su:
        for line in su:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 2:
                usage[fields[0].rsplit(":", 1)[-1]] = int(fields[1])
    return usage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--elf", required=True)
    parser.add_argument("--su", required=True)
    parser.add_argument("--size", default="avr-size")
    parser.add_argument("--objdump", default="avr-objdump")
    parser.add_argument("--flash", type=int, required=True)
    parser.add_argument("--ram", type=int, required=True)
    parser.add_argument("--flash-limit", type=int, required=True)
    parser.add_argument("--ram-free-min", type=int, required=True)
    args = parser.parse_args()

    sizes = sections(args.size, args.elf)
    flash = sizes.get(".text", 0) + sizes.get(".data", 0)
    static_ram = sizes.get(".data", 0) + sizes.get(".bss", 0) + sizes.get(".noinit", 0)
    code = disassembly(args.objdump, args.elf)
    reported = stack_usage(args.su)

    def frame(name: str) -> int:
        pushes = sum(1 for line in code[name] if re.search(r"\bpush\b", line))
        # "rcall .+0" is the compiler's two-byte stack allocation, not a call.
        pushes += 2 * sum(1 for line in code[name] if re.search(r"\brcall\s+\.\+0\b", line))
        adjust = 0
        for line in code[name]:
            m = re.search(r"\b(?:sbiw|subi)\s+r28,\s*0x([0-9A-Fa-f]+)", line)
            if m:
                adjust += int(m.group(1), 16)
        return max(reported.get(name, 0), pushes + adjust)

    def callees(name: str) -> set[str]:
        found: set[str] = set()
        for line in code[name]:
            if re.search(r"\bi(?:call|jmp)\b", line):
                raise SystemExit(
                    f"stack check: indirect call in {name}; the estimate needs a static call graph"
                )
            # A call, or a jump to the start of another function (a naked vector hands over to its handler).
            m = re.search(r"\br?call\b.*<([^>+]+)(?:\+0x[0-9a-f]+)?>", line) or re.search(
                r"\br?jmp\b.*<([^>+]+)>", line
            )
            if re.search(r"\brcall\s+\.\+0\b", line):
                continue
            if m and m.group(1) in code and m.group(1) != name:
                found.add(m.group(1))
        return found

    visiting: set[str] = set()

    @cache
    def depth(name: str) -> int:
        if name in visiting:
            raise SystemExit(f"stack check: recursion through {name}")
        visiting.add(name)
        deepest = max((RETURN_ADDRESS + depth(callee) for callee in callees(name)), default=0)
        visiting.discard(name)
        return frame(name) + deepest

    main_depth = RETURN_ADDRESS + depth("main")
    vectors = [name for name in code if re.fullmatch(r"__vector_\d+", name)]
    isr_depth = max((RETURN_ADDRESS + depth(v) for v in vectors), default=0)
    stack = main_depth + isr_depth
    free = args.ram - static_ram - stack
    print(
        f"flash: {flash} of {args.flash} bytes ({100.0 * flash / args.flash:.1f} %, limit {args.flash_limit})"
    )
    print(
        f"ram: {static_ram} bytes static + {stack} bytes deepest stack (main {main_depth}, interrupt "
        f"{isr_depth}) = {static_ram + stack} of {args.ram}; {free} bytes free (minimum {args.ram_free_min})"
    )
    failed = False
    if flash >= args.flash_limit:
        print(f"size check FAILED: flash {flash} >= {args.flash_limit}", file=sys.stderr)
        failed = True
    if free < args.ram_free_min:
        print(f"size check FAILED: {free} bytes of RAM free < {args.ram_free_min}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
