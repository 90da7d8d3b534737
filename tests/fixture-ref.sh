# fixture-ref.sh - sourced by shell tests: ref FILE WHAT reads a fixture's reference.safetensors
# (written by tests/fixtures/make_fixtures.py from transformers).
# reference.safetensors reader: prints "greedy_ids" or the argmax per prompt position
ref() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
path, what = sys.argv[1], sys.argv[2]
b = open(path, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n]); base = 8 + n
def get(name, fmt):
    e = h[name]; s, t = e['data_offsets']; cnt = (t - s) // struct.calcsize(fmt)
    return e['shape'], struct.unpack('<%d%s' % (cnt, fmt), b[base + s:base + t])
if what == 'prompt':
    print(','.join(str(x) for x in get('prompt_ids', 'q')[1]))
elif what == 'greedy':
    print(','.join(str(x) for x in get('greedy_ids', 'q')[1]))
else:
    (T, V), v = get('logits', 'f')
    print(' '.join(str(max(range(V), key=lambda i: v[t * V + i])) for t in range(T)))
PY
}
