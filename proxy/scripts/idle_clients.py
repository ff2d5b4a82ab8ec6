# Open N idle desktops through a proxy (each completes a hello) and hold them: a scale check
# past the per-process fd cap. Usage: idle_clients.py HOST:PORT N HOLD_SECONDS [SOURCE_IP]
# (token "tok-acme", tenant 1; use a different 127.0.0.x source per process past ~28k ports).
import socket, struct, sys, time
addr = (sys.argv[1].split(':')[0], int(sys.argv[1].split(':')[1])); n = int(sys.argv[2]); hold = float(sys.argv[3])
def item_int(k, v): kb = k.encode(); return bytes([len(kb)]) + kb + b'\x01' + struct.pack('>q', v)
def item_str(k, v): kb = k.encode(); vb = v.encode(); return bytes([len(kb)]) + kb + b'\x02' + struct.pack('>I', len(vb)) + vb
body = item_int('version', 1) + item_str('agent', 'idle') + item_str('token', 'tok-acme') + item_int('services', 6)
head = b'DM' + bytes([1, 1, 0, 0]) + struct.pack('>H', 1) + struct.pack('>I', len(body)) + struct.pack('>I', 1) + struct.pack('>Q', 1) + struct.pack('>Q', 0)
hello = head + body
src = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
socks = []; ok = 0; t0 = time.time()
for i in range(n):
    s = socket.create_connection(addr, source_address=(src, 0)); s.sendall(hello); socks.append(s)
    if len(socks) % 200 == 0 or i == n - 1:
        for x in socks[len(socks) - (len(socks) % 200 or 200):]:
            x.settimeout(10); d = b''
            while len(d) < 32: d += x.recv(4096)
            ok += (d[5] & 1) == 0
print(f"opened {n}, hello ok {ok}, in {time.time()-t0:.1f}s", flush=True)
time.sleep(hold)
