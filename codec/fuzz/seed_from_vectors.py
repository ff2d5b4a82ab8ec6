"""Seed corpus/decode with the PROTOCOL.md §11 vectors (each prefixed by a chunk-size byte)."""
import os, re, sys
here = os.path.dirname(os.path.abspath(__file__))
md = open(os.path.join(here, "..", "..", "PROTOCOL.md"), encoding="utf-8").read()
out = os.path.join(here, "corpus", "decode")
os.makedirs(out, exist_ok=True)
n = 0
for block in re.findall(r"```vector\n(.*?)```", md, re.S):
    name = re.search(r"^name: (.*)$", block, re.M).group(1)
    data = bytes.fromhex("".join(re.findall(r"^hex: (.*)$", block, re.M)))
    # 0xff: the whole input in one chunk; 0x00: one byte at a time.
    for prefix in (b"\xff", b"\x00"):
        open(os.path.join(out, f"vector-{name}-{prefix.hex()}"), "wb").write(prefix + data)
        n += 1
print(f"wrote {n} seeds to {out}", file=sys.stderr)
