# A hostile desktop for benches/merge_bomb.sh, written from PROTOCOL.md: it logs in directly to
# core-server and keeps sending the largest property lists a 2 MiB frame holds (130,000 items)
# to SUBMIT (the engine) and CONTACT_CREATE (the DB worker), `depth` at a time, until killed.
# Each is refused MALFORMED; the point is what the other tenants see meanwhile.
#
#   merge_bomb.py HOST:PORT TENANT AGENT PASSWORD [DEPTH] [RATE]
# RATE: bombs per second at most (0, the default: as fast as the server answers).
# Prints one line per 20 answers: answers so far and their codes.
import socket, struct, sys, time

host, port = sys.argv[1].rsplit(':', 1)
tenant, agent, password = int(sys.argv[2]), sys.argv[3], sys.argv[4]
depth = int(sys.argv[5]) if len(sys.argv) > 5 else 4
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0

def item_int(k, v):
    kb = k.encode(); return bytes([len(kb)]) + kb + b'\x01' + struct.pack('>q', v)
def item_str(k, v):
    kb, vb = k.encode(), v.encode(); return bytes([len(kb)]) + kb + b'\x02' + struct.pack('>I', len(vb)) + vb
def item_list(k, body):
    kb = k.encode(); return bytes([len(kb)]) + kb + b'\x04' + struct.pack('>I', len(body)) + body
def frame(service, msg, corr, session, body, kind=1):
    # magic, version 1, kind, service, flags 0, type, length, tenant, correlation, session (§2)
    return (b'DM' + bytes([1, kind, service, 0]) + struct.pack('>HIIQQ', msg, len(body), tenant, corr, session) + body)

def read_frame(s, buf):
    while len(buf) < 32:
        d = s.recv(65536)
        if not d: raise SystemExit('closed by the server')
        buf += d
    n = struct.unpack('>I', buf[8:12])[0]
    while len(buf) < 32 + n:
        d = s.recv(65536)
        if not d: raise SystemExit('closed by the server')
        buf += d
    return buf[:32 + n], buf[32 + n:]

def error_code(f):
    # An error body (flag 0x01) has `code` (int) and `message` (str), §5.
    if not f[5] & 1: return 0
    body, i = f[32:], 0
    while i < len(body):
        kl = body[i]; key = body[i+1:i+1+kl].decode(); t = body[i+1+kl]; i += 2 + kl
        if t == 1:
            v = struct.unpack('>q', body[i:i+8])[0]; i += 8
            if key == 'code': return v
        else:
            ln = struct.unpack('>I', body[i:i+4])[0]; i += 4 + ln
    return -1

s = socket.create_connection((host, int(port)))
s.sendall(frame(0, 0x0001, 1, 0, item_int('version', 1) + item_str('agent', agent) + item_str('token', password) + item_int('services', 6)))
hello, buf = read_frame(s, b'')
if hello[5] & 1: raise SystemExit(f'hello refused: code {error_code(hello)}')
session = struct.unpack('>Q', hello[24:32])[0]

# 15 bytes an item: 130,000 of them stay under the 2 MiB frame.
items = b''.join(item_str(f'k{i:07d}', 'v') for i in range(130_000))
bombs = [
    (1, 0x0020, item_str('queue', 'q') + item_list('props', items)),   # SUBMIT
    (2, 0x0010, item_list('attrs', items)),                            # CONTACT_CREATE
]
corr, out, answered, codes = 100, 0, 0, {}
t0 = time.time()
while True:
    while out < depth:
        if rate > 0:
            # Paced: the next bomb no earlier than its slot.
            due = t0 + (corr - 100) / rate
            if time.time() < due:
                time.sleep(due - time.time())
        svc, msg, body = bombs[corr % 2]
        s.sendall(frame(svc, msg, corr, session, body)); corr += 1; out += 1
    f, buf = read_frame(s, buf)
    if f[3] != 2: continue   # events, heartbeats
    out -= 1; answered += 1
    c = error_code(f); codes[c] = codes.get(c, 0) + 1
    if answered % 20 == 0:
        print(f'{time.time() - t0:.1f}s answered {answered} codes {codes}', flush=True)
